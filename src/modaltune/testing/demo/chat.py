"""The demo's chat section: visual instruction tuning of a tiny LLaVA on synthetic conversations
about the shapes world (colours, counts, positions, follow-ups), through the same `train` and
`predict` as every task, with the base model's and the tuned model's answers side by side.

No pretrained chat VLM can be downloaded here, so the base is a random tiny LLaVA built from its
config (`modaltune.testing.tiny_chat`): its answers are noise, and the section shows the chat path
end to end (LLaVA JSON, the model's chat template, assistant-only labels, training, generation,
the merged model/ and its adapter), not transfer from pretraining. With ``llava-hf/llava-1.5-7b-hf``
the same calls start from a model that already chats.

What a random tiny LLaVA learns in the section's budget (about 20 s of one core) is each question's
answer: a colour word for a colour question, a number for a count, the spelled letters or the sum for
a text-only question, and the end of the answer. Which colour or how many it does not learn: its
random vision tower does not learn to find a small shape on a coloured background in a few hundred
steps (1,140 steps on 760 colour questions still scored at chance), so those answers are the
commonest ones. The questions are single-turn (a follow-up's answer, "It is on the left.", is scored
instead of the first one otherwise) and kept to those three kinds, so the answers it learns show.
"""

from __future__ import annotations

import html
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.table import Table


@dataclass(frozen=True)
class ChatSpec:
    conversations: int  # the data's seeded 20 % is validation
    epochs: int
    batch_size: int = 8
    lr: float = 2e-3


FULL_CHAT = ChatSpec(conversations=160, epochs=16, lr=5e-3)
QUICK_CHAT = ChatSpec(conversations=16, epochs=1, lr=5e-3)
#: Question kinds of the data (`modaltune.testing.synthetic_chat`); one conversation of each is shown.
KINDS = ("colour", "count", "text")
#: Conversations shown with both models' answers.
SHOWN = len(KINDS)
#: Long enough for the longest answer, a spelled word ("t r i a n g l e" and its end token).
MAX_NEW_TOKENS = 16


def run_chat_section(output: Path, *, quick: bool, console: Console) -> list[dict[str, Any]]:
    """Instruction-tune a tiny LLaVA (every parameter) on synthetic conversations; one result dict."""
    from modaltune.api import train
    from modaltune.config import build_config
    from modaltune.testing.synthetic_chat import chat_texts, write_llava_json
    from modaltune.testing.tiny_chat import build_llava

    spec = QUICK_CHAT if quick else FULL_CHAT
    root = output / "data" / "chat"
    if root.exists():
        shutil.rmtree(root)
    tick = time.perf_counter()
    model = build_llava(root / "models" / "llava", texts=chat_texts(), seed=0)
    data = write_llava_json(root / "conversations", spec.conversations, seed=5, kinds=KINDS, follow_ups=False)
    console.print(f"{spec.conversations} synthetic conversations about shapes (LLaVA JSON; colours, counts and "
                  f"text-only questions) in {data}; a random tiny LLaVA built from its config")
    run = output / "runs" / "chat-llava-full"
    cfg = build_config(task="chat", model=str(model), data=str(data), output=str(run), strategy="full",
                       epochs=spec.epochs, batch_size=spec.batch_size, lr=spec.lr, seed=0, keep_last=1,
                       max_new_tokens=MAX_NEW_TOKENS,
                       # more than the run's steps: one evaluation, at the end (each one generates an
                       # answer to every validation question, which costs as much as many steps)
                       eval_every=spec.epochs * spec.conversations)
    metrics = train(cfg)
    base = {s["id"]: s for s in metrics["zero_shot"].get("samples", [])}
    shown = [{"prompt": s["question"], "image": s.get("image"), "base": base.get(s["id"], {}).get("prediction", ""),
              "tuned": s["prediction"], "reference": (s.get("references") or [""])[0]}
             for s in _one_per_kind(metrics["samples"], data)]
    keys = ("loss", "token_accuracy", "exact_match", "rouge_l")
    result = {
        "task": "chat", "model": "tiny LLaVA", "strategy": "full",
        "base": {k: metrics["zero_shot"].get(k) for k in keys},
        "tuned": {k: metrics.get(k) for k in keys},
        "conversations": shown, "report": str(run / "report.html"), "seconds": round(time.perf_counter() - tick, 1),
    }
    console.print(chat_table(result))
    return [result]


def _one_per_kind(samples: list[dict[str, Any]], data: Path) -> list[dict[str, Any]]:
    """Up to `SHOWN` report samples, a different question kind each where the samples have them (the
    kind is the prefix of the conversation's id in the data: ``colour-00012``)."""
    records = json.loads(data.read_text(encoding="utf-8"))
    chosen: dict[str, dict[str, Any]] = {}
    rest = []
    for sample in samples:
        index = sample["id"].rsplit("[", 1)[-1].rstrip("]")  # a JSON array's rows are named file:[index]
        kind = str(records[int(index)].get("id", "")).split("-")[0] if index.isdigit() else ""
        if kind and kind not in chosen:
            chosen[kind] = sample
        else:
            rest.append(sample)
    return ([*chosen.values(), *rest])[:SHOWN]


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"


def chat_table(result: dict[str, Any]) -> Table:
    table = Table(title="visual instruction tuning (validation, random-init tiny LLaVA)")
    for column in ("", "answer-token loss", "token accuracy", "exact match (short answers)", "ROUGE-L (long)"):
        table.add_column(column)
    for name in ("base", "tuned"):
        r = result[name]
        table.add_row(name, _fmt(r["loss"]), _fmt(r["token_accuracy"]), _fmt(r["exact_match"]),
                      _fmt(r.get("rouge_l")))
    for c in result["conversations"]:
        table.add_row(c["prompt"].splitlines()[-1][:60], f"base: {c['base'][:30] or '(empty)'}",
                      f"tuned: {c['tuned'][:30] or '(empty)'}", f"reference: {c['reference'][:30]}", "")
    return table


def chat_tables(results: list[dict[str, Any]]) -> Group:
    """The section's console view: one table per result (the demo's section hook passes them all)."""
    return Group(*(chat_table(result) for result in results))


def chat_html(results: list[dict[str, Any]]) -> str:
    return "".join(_result_html(result) for result in results)


def _result_html(result: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(c['prompt'])}</td><td>{html.escape(c['base'])}</td>"
        f"<td><b>{html.escape(c['tuned'])}</b></td><td>{html.escape(c['reference'])}</td></tr>"
        for c in result["conversations"])
    b, t = result["base"], result["tuned"]
    return (f"<p>A random tiny LLaVA instruction-tuned on synthetic conversations (every parameter, "
            f"{result['seconds']:.0f}s): answer-token loss {_fmt(b['loss'])} → {_fmt(t['loss'])}, token accuracy "
            f"{_fmt(b['token_accuracy'])} → {_fmt(t['token_accuracy'])}, exact match on short answers "
            f"{_fmt(b['exact_match'])} → {_fmt(t['exact_match'])}, ROUGE-L on long answers "
            f"{_fmt(b.get('rouge_l'))} → {_fmt(t.get('rouge_l'))}. It learns the form of each question's answer; "
            "which colour or how many needs a vision tower that has learnt to see (a pretrained LLaVA's). "
            f"<a href=\"{html.escape(Path(result['report']).as_posix())}\">report</a></p>"
            "<table><tr><th>conversation</th><th>base answer</th><th>tuned answer</th><th>reference</th></tr>"
            + rows + "</table>")
