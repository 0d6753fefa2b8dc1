"""Session setup shared by every test: offline Hugging Face, small thread pools, tiny fixtures.

The fixtures build real artefacts (a CLIP saved with `save_pretrained`, PNG folders, a JSONL
manifest) in temp dirs once per session. They are shared: tests must read them, never modify
them (copy to `tmp_path` first).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Before anything imports transformers / huggingface_hub: they read these once, at import time.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"

# Run from a plain checkout too (no `pip install -e .`): put src/ on the path if needed.
_SRC = Path(__file__).resolve().parents[1] / "src"
try:
    import modaltune  # noqa: F401
except ImportError:
    sys.path.insert(0, str(_SRC))

import pytest  # noqa: E402
import torch  # noqa: E402

from modaltune.testing.synthetic import vocabulary_texts, write_caption_corpus, write_classification_folder  # noqa: E402
from modaltune.testing.tiny_clip import build_clip  # noqa: E402

torch.set_num_threads(2)  # tiny models gain nothing from more, and parallel test workers stay polite

@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Feature caches and demo base models go to a temp dir, never the user's ~/.cache."""
    os.environ["MODALTUNE_CACHE"] = str(tmp_path_factory.mktemp("modaltune-cache"))


TINY_CLIP = dict(
    hidden_size=32, layers=2, heads=4, intermediate_size=37, image_size=32, patch_size=8, max_text_len=16
)
SHAPE_CLASSES = ["circle", "square", "triangle"]
SHAPE_COUNTS = {"train": 6, "val": 4}
N_CAPTIONS = 24


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of a random tiny CLIP (hidden 32, 2 layers, 32px images) with its processor."""
    return build_clip(tmp_path_factory.mktemp("tiny-clip"), texts=vocabulary_texts(), seed=0, **TINY_CLIP)


@pytest.fixture(scope="session")
def shape_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`root/{train,val}/{circle,square,triangle}/*.png`: 6 train and 4 val 32px images per class."""
    root = tmp_path_factory.mktemp("shapes")
    return write_classification_folder(
        root, classes=SHAPE_CLASSES, attribute="shape", per_class=SHAPE_COUNTS, seed=0, image_size=32
    )


@pytest.fixture(scope="session")
def caption_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`captions.jsonl` with 24 image/text pairs (32px PNGs under `images/` beside it)."""
    return write_caption_corpus(tmp_path_factory.mktemp("captions"), N_CAPTIONS, seed=0, image_size=32)


@pytest.fixture(scope="session")
def tiny_clip_run(tmp_path_factory: pytest.TempPathFactory, tiny_clip: Path, shape_folder: Path) -> Path:
    """A finished classify run of the tiny CLIP on the shapes (linear probe, 1 epoch): a run directory
    with model/, metrics.json and config.yaml, for tests that serve or export a run."""
    from modaltune import api
    from modaltune.config import build_config

    output = tmp_path_factory.mktemp("clip-run") / "run"
    api.train(build_config(task="classify", model=str(tiny_clip), data=str(shape_folder), strategy="linear-probe",
                           epochs=1, batch_size=4, output=str(output)))
    return output


# ---- vision-language families (vqa, caption) ----------------------------------------------------

VL_IMAGE_SIZE = 32
#: Answers a tiny ViLT already "knows" (its own labels); the data adds the rest.
VILT_ANSWERS = ["yes", "no", "red", "circle"]


def _vl_texts() -> list[str]:
    from modaltune.testing.synthetic import vqa_texts

    return vocabulary_texts() + vqa_texts()


@pytest.fixture(scope="session")
def vqa_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`vqa.jsonl`: 24 images, one question each, 3 annotator answers (10% noisy)."""
    from modaltune.testing.synthetic import write_vqa_corpus

    return write_vqa_corpus(tmp_path_factory.mktemp("vqa"), 24, seed=0, image_size=VL_IMAGE_SIZE)


@pytest.fixture(scope="session")
def multi_caption_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`captions.jsonl`: 12 images with 2 captions each (one line per caption)."""
    from modaltune.testing.synthetic import write_multi_caption_corpus

    return write_multi_caption_corpus(tmp_path_factory.mktemp("mcap"), 12, seed=0, captions=2,
                                      image_size=VL_IMAGE_SIZE)


@pytest.fixture(scope="session")
def tiny_vilt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from modaltune.testing.tiny_vl import build_vilt_vqa

    return build_vilt_vqa(tmp_path_factory.mktemp("tiny-vilt"), texts=_vl_texts(), answers=VILT_ANSWERS, seed=0)


@pytest.fixture(scope="session")
def tiny_blip_vqa(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from modaltune.testing.tiny_vl import build_blip_vqa

    return build_blip_vqa(tmp_path_factory.mktemp("tiny-blip-vqa"), texts=_vl_texts(), seed=0)


@pytest.fixture(scope="session")
def tiny_blip_caption(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from modaltune.testing.tiny_vl import build_blip_caption

    return build_blip_caption(tmp_path_factory.mktemp("tiny-blip-cap"), texts=_vl_texts(), seed=0)


@pytest.fixture(scope="session")
def tiny_git(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generic image-text-to-text model (GIT), loaded through AutoModelForImageTextToText."""
    from modaltune.testing.tiny_vl import build_git_caption

    return build_git_caption(tmp_path_factory.mktemp("tiny-git"), texts=_vl_texts(), seed=0)


# ---- chat VLMs (LLaVA, Qwen2-VL, Idefics3, PaliGemma) --------------------------------------------


def _tiny_chat(tmp_path_factory: pytest.TempPathFactory, arch: str) -> Path:
    from modaltune.testing.synthetic_chat import chat_texts
    from modaltune.testing.tiny_chat import BUILDERS

    return BUILDERS[arch](tmp_path_factory.mktemp(f"tiny-{arch}"), texts=chat_texts(), seed=0)


@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny LLaVA (CLIP tower, Llama LM, 16 image tokens) with processor and chat template."""
    return _tiny_chat(tmp_path_factory, "llava")


@pytest.fixture(scope="session")
def tiny_llava_next(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny LLaVA-NeXT (AnyRes tiles: an image's token count depends on its size)."""
    return _tiny_chat(tmp_path_factory, "llava_next")


@pytest.fixture(scope="session")
def tiny_qwen2_vl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny Qwen2-VL (dynamic resolution; load its processor with models.chat_processor.load_processor)."""
    return _tiny_chat(tmp_path_factory, "qwen2_vl")


@pytest.fixture(scope="session")
def tiny_idefics3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny Idefics3 (SmolVLM's architecture: image tiles plus a global image)."""
    return _tiny_chat(tmp_path_factory, "idefics3")


@pytest.fixture(scope="session")
def tiny_paligemma(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny PaliGemma (prefix/suffix, no chat template)."""
    return _tiny_chat(tmp_path_factory, "paligemma")


@pytest.fixture(scope="session")
def chat_llava_json(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`chat.json` in LLaVA's layout: 24 synthetic conversations (32px PNGs under `images/`)."""
    from modaltune.testing.synthetic_chat import write_llava_json

    return write_llava_json(tmp_path_factory.mktemp("chat-llava"), 24, seed=0)


@pytest.fixture(scope="session")
def chat_messages_jsonl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`chat.jsonl` of {"messages", "images"} lines: the same 24 conversations as `chat_llava_json`."""
    from modaltune.testing.synthetic_chat import write_messages_jsonl

    return write_messages_jsonl(tmp_path_factory.mktemp("chat-msgs"), 24, seed=0)


# ---- audio–text family (CLAP) ---------------------------------------------------------------

#: Sound classes of the audio fixtures (`modaltune.testing.synthetic_audio.SOUND_KINDS`).
SOUND_CLASSES = ["chirp", "noise", "tone"]


@pytest.fixture(scope="session")
def tiny_clap(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of a random tiny CLAP (2-stage HTSAT on 16 mel bins, 2-layer text tower, 1 s at 48 kHz)."""
    from modaltune.testing.synthetic_audio import audio_caption_texts
    from modaltune.testing.tiny_clap import build_clap

    return build_clap(tmp_path_factory.mktemp("tiny-clap"), texts=audio_caption_texts() * 4, seed=0)


@pytest.fixture(scope="session")
def sound_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`root/{train,val}/{chirp,noise,tone}/*.{wav,flac}`: 4 train and 2 val 1 s clips per class, at
    16/22.05/44.1/48 kHz, some stereo."""
    from modaltune.testing.synthetic_audio import write_audio_classification_folder

    return write_audio_classification_folder(tmp_path_factory.mktemp("sounds"), SOUND_CLASSES,
                                             per_class={"train": 4, "val": 2}, seed=0, formats=("wav", "flac"))


@pytest.fixture(scope="session")
def sound_caption_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`clips.jsonl`: 12 audio–caption pairs (wav and flac clips under `clips/` beside it)."""
    from modaltune.testing.synthetic_audio import write_audio_caption_corpus

    return write_audio_caption_corpus(tmp_path_factory.mktemp("clip-captions"), 12, seed=0)


# ---- open-vocabulary detection (Grounding DINO, OWLv2) ---------------------------------------

#: Words the tiny detectors' tokenizers know besides their base words (the scenes' class names).
DETECT_TEXTS = ["red circle", "blue square", "green triangle", "yellow star", "a photo of an object"]


@pytest.fixture(scope="session")
def tiny_grounding_dino(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny Grounding DINO (Swin 4x1 stages, 1-layer BERT with a bert-base-uncased id layout,
    1 fusion encoder and 2 decoder layers, hidden 32, 20 queries, 32 text tokens) with its processor."""
    from modaltune.testing.tiny_detect import build_grounding_dino

    return build_grounding_dino(tmp_path_factory.mktemp("tiny-gdino"), texts=DETECT_TEXTS, seed=0)


@pytest.fixture(scope="session")
def tiny_owlv2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny OWLv2 (2-layer towers, hidden 32, 64 px images in 8 px patches: 64 boxes)."""
    from modaltune.testing.tiny_detect import build_owl

    return build_owl(tmp_path_factory.mktemp("tiny-owlv2"), kind="owlv2", texts=DETECT_TEXTS, seed=0)


@pytest.fixture(scope="session")
def detect_scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`instances.json` (COCO instances): 8 synthetic 64-96 px scenes of circles and squares, one a
    negative, images under `images/` beside it."""
    from modaltune.testing.synthetic_scenes import write_scenes

    return write_scenes(tmp_path_factory.mktemp("scenes"), seed=0, count=8, categories=("circle", "square"),
                        max_objects=2, negatives=0.125).coco


@pytest.fixture()
def run_cli(capsys: pytest.CaptureFixture[str]):
    """Run ``modaltune ARGS`` in-process; returns an object with returncode, stdout and stderr."""
    from types import SimpleNamespace

    from _cli import invoke

    def run(*args: str) -> SimpleNamespace:
        code, out, err = invoke(capsys, *args)
        return SimpleNamespace(returncode=code, stdout=out, stderr=err)

    return run
