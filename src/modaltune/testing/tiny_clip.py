"""Small, real CLIP models built offline and saved in standard Hugging Face format.

The hub is unreachable here, so tests and the demo build their own CLIP: a CLIP-style BPE
tokenizer trained on the given texts, a `CLIPConfig` sized to it, random weights from a seed,
and a `CLIPProcessor`. Everything is written with `save_pretrained`, so the rest of the code
loads it through `CLIPModel` / `AutoModel` / `AutoProcessor.from_pretrained(dir)` exactly as it
would load `openai/clip-vit-base-patch32`.
"""

from __future__ import annotations

import inspect
import json
from collections import Counter
from collections.abc import Iterable
from functools import lru_cache
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import BPE

if TYPE_CHECKING:
    from transformers import CLIPConfig, CLIPProcessor, CLIPTokenizer
    from transformers.image_processing_utils import BaseImageProcessor

# torch and transformers are imported inside the functions that need them: training a tokenizer
# (and importing this module) stays fast, which matters for subprocess-based tests.

SOT = "<|startoftext|>"
EOT = "<|endoftext|>"  # CLIP's end, padding and unknown token all at once
END_OF_WORD = "</w>"

# CLIP's word splitter (from openai/CLIP simple_tokenizer.py, as used by transformers' CLIPTokenizer).
_CLIP_SPLIT = (
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
)


# --------------------------------------------------------------------------- tokenizer


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """CLIP/GPT-2's reversible byte → printable-character table (the BPE alphabet)."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    )
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    # Order matters: CLIP's vocab lists the printable bytes first, then the remapped ones.
    return {b: table[b] for b in printable + [b for b in range(256) if b not in printable]}


def _word_splitter() -> Tokenizer:
    """CLIP's normaliser + pre-tokeniser, so training sees exactly the words `CLIPTokenizer` will."""
    splitter = Tokenizer(BPE())
    splitter.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    splitter.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_CLIP_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    return splitter


def _count_words(texts: Iterable[str]) -> Counter[tuple[str, ...]]:
    """Word frequencies, each word as its characters with the end-of-word marker on the last one."""
    splitter = _word_splitter()
    counts: Counter[str] = Counter()
    for text in texts:
        normalized = splitter.normalizer.normalize_str(text)
        counts.update(word for word, _span in splitter.pre_tokenizer.pre_tokenize_str(normalized))
    return Counter({(*word[:-1], word[-1] + END_OF_WORD): n for word, n in counts.items() if word})


def _merge_pair(word: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    out: list[str] = []
    i = 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            out.append(word[i] + word[i + 1])
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def _learn_merges(words: Counter[tuple[str, ...]], max_new_tokens: int) -> list[tuple[str, str]]:
    """Greedy BPE: repeatedly merge the most frequent adjacent pair.

    Written here rather than with `tokenizers.trainers.BpeTrainer` because that trainer breaks
    count ties in Rust hash-map order, which is seeded randomly per process: the same texts gave
    different merges from run to run. Ties here go to the lexicographically smallest pair.
    """
    merges: list[tuple[str, str]] = []
    made: set[str] = set()
    while len(made) < max_new_tokens:
        pairs: Counter[tuple[str, str]] = Counter()
        for word, n in words.items():
            for pair in pairwise(word):
                pairs[pair] += n
        if not pairs:
            break  # every word is already one token
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        made.add(best[0] + best[1])
        words = Counter({_merge_pair(word, best): n for word, n in words.items()})
    return merges


def _alphabet(words: Iterable[tuple[str, ...]]) -> list[str]:
    """Every byte character printable ASCII needs, plus any other the texts used, in CLIP's order.

    Whitespace never reaches the BPE (the splitter drops it), so printable ASCII covers all
    English text: words the texts never contained still tokenize, letter by letter.
    """
    seen = {symbol.removesuffix(END_OF_WORD) for word in words for symbol in word}
    ascii_printable = {chr(b) for b in range(ord("!"), ord("~") + 1)}
    return [ch for ch in bytes_to_unicode().values() if ch in ascii_printable or ch in seen]


def train_clip_tokenizer(texts: Iterable[str], out_dir: Path, vocab_size: int = 400) -> None:
    """Train a CLIP-style BPE on `texts`; write CLIP-format `vocab.json` + `merges.txt` to `out_dir`.

    The vocab is laid out like OpenAI's: single characters, the same with `</w>`, merged tokens in
    merge order, then `<|startoftext|>` and `<|endoftext|>` last. `vocab_size` is an upper bound:
    a small corpus can run out of pairs to merge before reaching it.
    """
    words = _count_words(texts)
    alphabet = _alphabet(words)
    base = alphabet + [ch + END_OF_WORD for ch in alphabet]
    budget = vocab_size - len(base) - 2
    if budget < 0:
        raise ValueError(
            f"vocab_size={vocab_size} is too small: the character alphabet alone needs {len(base) + 2}"
        )
    merges = _learn_merges(words, budget)

    tokens = base + [a + b for a, b in merges] + [SOT, EOT]
    vocab = {token: i for i, token in enumerate(dict.fromkeys(tokens))}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    # Same header as OpenAI's bpe file; transformers and tokenizers skip it.
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (out_dir / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def load_clip_tokenizer(tokenizer_dir: Path, *, max_length: int = 77) -> CLIPTokenizer:
    """Load `vocab.json` + `merges.txt` from `tokenizer_dir` as a transformers `CLIPTokenizer`.

    transformers 5 quirk: `CLIPTokenizer(vocab_file=..., merges_file=...)` silently ignores both
    keywords and builds a 3-token tokenizer. Its documented inputs are `vocab=` (dict) and
    `merges=` (pairs); transformers 4 only takes the two file paths, positionally.
    """
    from transformers import CLIPTokenizer

    tokenizer_dir = Path(tokenizer_dir)
    vocab_path, merges_path = tokenizer_dir / "vocab.json", tokenizer_dir / "merges.txt"
    # model_max_length = the text tower's positions, so `truncation=True` can never overflow them.
    if "vocab" not in inspect.signature(CLIPTokenizer.__init__).parameters:  # transformers 4.x
        return CLIPTokenizer(str(vocab_path), str(merges_path), model_max_length=max_length)
    vocab = json.loads(vocab_path.read_text(encoding="utf-8"))
    lines = merges_path.read_text(encoding="utf-8").splitlines()
    merges = [tuple(line.split(" ")) for line in lines if line and not line.startswith("#version")]
    # transformers annotates merges as list[str], but hands them to tokenizers' BPE, which takes (a, b) pairs.
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- model


def tiny_clip_config(
    *,
    vocab_size: int,
    hidden_size: int = 32,
    layers: int = 2,
    heads: int = 4,
    intermediate_size: int | None = None,
    image_size: int = 32,
    patch_size: int = 8,
    projection_dim: int | None = None,
    max_text_len: int = 16,
    dropout: float = 0.0,
) -> CLIPConfig:
    """A CLIPConfig with both towers the same small size; token ids match `train_clip_tokenizer`.

    `vocab_size` is the tokenizer's real length: its last two ids are `<|startoftext|>` and
    `<|endoftext|>` (CLIP's layout). `eos_token_id` must be right because CLIP pools the text at
    the first `<|endoftext|>`; padding uses the same token, as in CLIP.
    """
    from transformers import CLIPConfig

    intermediate_size = intermediate_size or 4 * hidden_size
    projection_dim = projection_dim or hidden_size
    tower = {
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "projection_dim": projection_dim,
        "attention_dropout": dropout,  # CLIP's only dropout
    }
    bos_id, eos_id = vocab_size - 2, vocab_size - 1
    text_config = {
        **tower,
        "vocab_size": vocab_size,
        "max_position_embeddings": max_text_len,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": eos_id,
    }
    vision_config = {**tower, "image_size": image_size, "patch_size": patch_size}
    return CLIPConfig(text_config=text_config, vision_config=vision_config, projection_dim=projection_dim)


def tiny_clip_processor(tokenizer: CLIPTokenizer, image_size: int) -> CLIPProcessor:
    """CLIP's preprocessing at `image_size`: bicubic short-side resize, centre crop, OpenAI mean/std."""
    from transformers import CLIPProcessor

    return CLIPProcessor(image_processor=_clip_image_processor(image_size), tokenizer=tokenizer)


def _clip_image_processor(image_size: int) -> BaseImageProcessor:
    """The torchvision-backed `CLIPImageProcessor` where torchvision is installed, else the PIL one.

    This mirrors what `AutoImageProcessor` picks in transformers 5, so a saved-and-reloaded
    processor has the same class as the one we built.
    """
    from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    kwargs = {
        "size": {"shortest_edge": image_size},
        "crop_size": {"height": image_size, "width": image_size},
        "image_mean": OPENAI_CLIP_MEAN,
        "image_std": OPENAI_CLIP_STD,
    }
    try:
        from transformers import CLIPImageProcessorPil
    except ImportError:  # transformers 4.x: one class, PIL/numpy based
        from transformers import CLIPImageProcessor

        return CLIPImageProcessor(**kwargs)
    from transformers.utils import is_torchvision_available

    if is_torchvision_available():
        from transformers import CLIPImageProcessor

        return CLIPImageProcessor(**kwargs)
    return CLIPImageProcessorPil(**kwargs)


def build_clip(
    out_dir: Path, *, texts: Iterable[str], seed: int = 0, vocab_size: int = 400, **config_kwargs: Any
) -> Path:
    """Build a random-weight CLIP with a tokenizer trained on `texts`; `save_pretrained` it to `out_dir`.

    `config_kwargs` go to `tiny_clip_config`. The same seed and texts give byte-identical files.
    """
    import torch
    from transformers import CLIPModel

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    texts = list(texts)
    max_text_len = config_kwargs.setdefault("max_text_len", 16)
    image_size = config_kwargs.setdefault("image_size", 32)

    train_clip_tokenizer(texts, out_dir, vocab_size=vocab_size)
    tokenizer = load_clip_tokenizer(out_dir, max_length=max_text_len)
    config = tiny_clip_config(vocab_size=len(tokenizer), **config_kwargs)

    # Seed a forked RNG: the weights depend only on `seed`, and the caller's RNG state is untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config)
    model.save_pretrained(out_dir, safe_serialization=True)
    tiny_clip_processor(tokenizer, image_size).save_pretrained(out_dir)
    return out_dir
