"""The demo's vision-language section: visual question answering (ViLT) and captioning (BLIP) on
the synthetic shapes world, through the same `train` / `evaluate` / `predict` as every task.

No pretrained ViLT or BLIP can be downloaded here, so both start from small random models built
from their transformers configs (`modaltune.testing.tiny_vl`): the zero-shot column is what an untrained
model says, and the section shows the whole path (data, validation, training, VQA accuracy and
BLEU/CIDEr, sample predictions with images), not transfer from pretraining. With a hub model
(``dandelin/vilt-b32-finetuned-vqa``, ``Salesforce/blip-image-captioning-large``) the same calls
start from real knowledge.
"""

from __future__ import annotations

import html
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table


@dataclass(frozen=True)
class VlSpec:
    images: int  # VQA questions (one per image) and captioned images
    captions_per_image: int
    epochs_vqa: int
    epochs_caption: int
    image_size: int = 32
    batch_size: int = 16


# 320 images: 256 train, 64 validation (the data's seeded 20 %); VQA 20 epochs (320 steps), captioning 10.
# Was 480 images, 40 and 20 epochs (960 VQA steps): the largest part of the demo's time, for a curve that is
# mostly flat after the first 250 steps (validation VQA accuracy 0.08 -> 0.30 by step 240, 0.40 by step 650).
# At 320 images, 12 and 8 epochs: VQA accuracy 0.005 -> 0.224, CIDEr 0.27 -> 0.43.
FULL_VL = VlSpec(images=320, captions_per_image=2, epochs_vqa=20, epochs_caption=10)
QUICK_VL = VlSpec(images=24, captions_per_image=2, epochs_vqa=1, epochs_caption=1)


def run_vl_section(output: Path, *, quick: bool, console: Console) -> list[dict[str, Any]]:
    """Train a VQA and a captioning model; one result dict per task (as in demo_results.json)."""
    from modaltune.testing.synthetic import vocabulary_texts, vqa_texts, write_multi_caption_corpus, write_vqa_corpus
    from modaltune.testing.tiny_vl import TinySize, build_blip_caption, build_vilt_vqa

    spec = QUICK_VL if quick else FULL_VL
    root = output / "data" / "vl"
    if root.exists():
        shutil.rmtree(root)
    size = TinySize(hidden_size=64, intermediate_size=128, image_size=spec.image_size, patch_size=8)
    texts = vocabulary_texts() + vqa_texts()
    vqa_data = write_vqa_corpus(root / "vqa", spec.images, seed=11, image_size=spec.image_size)
    caption_data = write_multi_caption_corpus(root / "captions", spec.images, seed=12,
                                              captions=spec.captions_per_image, image_size=spec.image_size)
    vilt = build_vilt_vqa(root / "models" / "vilt", texts=texts, answers=["yes", "no"], seed=0, size=size)
    blip = build_blip_caption(root / "models" / "blip", texts=texts, seed=0, size=size)
    console.print(f"{spec.images} images with a question each (3 annotator answers) in {vqa_data}; "
                  f"{spec.images} images x {spec.captions_per_image} captions in {caption_data}; "
                  "random tiny ViLT and BLIP built from their configs")
    results = [
        _run("vqa", vilt, vqa_data, output / "runs" / "vqa-vilt-full", spec.epochs_vqa, 1e-3, spec,
             metric="vqa_accuracy", console=console),
        _run("caption", blip, caption_data, output / "runs" / "caption-blip-full", spec.epochs_caption, 1e-3, spec,
             metric="cider", console=console),
    ]
    console.print(vl_table(results))
    return results


def _run(task: str, model: Path, data: Path, run: Path, epochs: int, lr: float, spec: VlSpec, *, metric: str,
         console: Console) -> dict[str, Any]:
    from modaltune.api import predict, train
    from modaltune.config import build_config

    tick = time.perf_counter()
    cfg = build_config(task=task, model=str(model), data=str(data), output=str(run), strategy="full",
                       epochs=epochs, batch_size=spec.batch_size, lr=lr, seed=0, keep_last=1, max_new_tokens=12)
    metrics = train(cfg)
    sample = metrics["samples"][0]
    example: dict[str, Any] = predict(run, [sample["image"]], question=sample.get("question"))[0]
    keys = ["vqa_accuracy", "exact_match"] if task == "vqa" else ["bleu_1", "bleu_4", "cider", "rouge_l"]
    result: dict[str, Any] = {
        "task": task, "model": model.name, "strategy": "full", "metric": metric,
        "zero_shot": {k: metrics["zero_shot"][k] for k in keys}, "trained": {k: metrics[k] for k in keys},
        "example": {"image": sample["image"], "question": sample.get("question"),
                    "prediction": example.get("answer", example.get("caption")), "references": sample["references"]},
        "report": str(run / "report.html"), "seconds": round(time.perf_counter() - tick, 1),
    }
    console.print(f"  {task}: {metric} {result['zero_shot'][metric]:.3f} (untrained) -> "
                  f"{result['trained'][metric]:.3f} · {result['seconds']:.0f}s · report {result['report']}")
    return result


def vl_table(results: list[dict[str, Any]]) -> Table:
    table = Table(title="vision-language tasks (validation, random-init models trained with full)")
    for column in ("task", "metric", "untrained", "trained", "example question", "example output", "reference"):
        table.add_column(column)
    for r in results:
        m, e = r["metric"], r["example"]
        table.add_row(r["task"], m, f"{r['zero_shot'][m]:.3f}", f"{r['trained'][m]:.3f}", e["question"] or "",
                      e["prediction"], " | ".join(e["references"][:2]))
    return table


def vl_html(results: list[dict[str, Any]]) -> str:
    rows = []
    for r in results:
        scores = ", ".join(f"{k} {r['zero_shot'][k]:.3f} → {v:.3f}" for k, v in r["trained"].items())
        e = r["example"]
        question = f"Q: {html.escape(e['question'])} " if e["question"] else ""
        rows.append(f"<tr><td>{html.escape(r['task'])} ({html.escape(r['model'])}, {r['strategy']})</td>"
                    f"<td>{html.escape(scores)}</td><td>{question}→ <b>{html.escape(e['prediction'])}</b> "
                    f"(reference: {html.escape(' | '.join(e['references'][:3]))})</td>"
                    f"<td><a href=\"{html.escape(Path(r['report']).as_posix())}\">report</a> "
                    f"{r['seconds']:.0f}s</td></tr>")
    return ("<p>Random tiny ViLT and BLIP built from configs (no pretrained VQA or captioning model can be "
            "downloaded here), trained on the synthetic shapes world: scores go from untrained to trained on the "
            "validation split; each run's report shows sample predictions with their images.</p>"
            "<table><tr><th>task</th><th>untrained → trained</th><th>example</th><th></th></tr>"
            + "".join(rows) + "</table>")
