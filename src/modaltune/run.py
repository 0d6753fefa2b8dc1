"""The run directory: where every file of a run lives, and how it is written."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def data_report(self) -> Path:
        return self.root / "data_report.json"

    @property
    def history(self) -> Path:
        return self.root / "history.jsonl"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    def create(self) -> RunDir:
        for folder in (self.root, self.plots):
            folder.mkdir(parents=True, exist_ok=True)
        return self

    def write_json(self, path: Path, data: Any) -> None:
        write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")

    def append_history(self, entry: dict[str, Any]) -> None:
        with self.history.open("a") as f:
            f.write(json.dumps(entry) + "\n")

    def read_history(self) -> list[dict[str, Any]]:
        if not self.history.exists():
            return []
        return [json.loads(line) for line in self.history.read_text().splitlines() if line.strip()]

    def truncate_history(self, lines: int) -> None:
        """Drop history written after the checkpoint being resumed from (that work is redone)."""
        kept = self.history.read_text().splitlines()[:lines] if self.history.exists() else []
        write_text_atomic(self.history, "".join(line + "\n" for line in kept))


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def resolve_model_dir(path: str | Path) -> Path:
    """A run directory or a model directory → the directory holding the saved model."""
    path = Path(path)
    if (path / "model" / "config.json").is_file():
        return path / "model"
    return path


def user_cache_dir() -> Path:
    """``$MODALTUNE_CACHE``, else ``$XDG_CACHE_HOME/modaltune``, else ``~/.cache/modaltune``."""
    import os

    if os.environ.get("MODALTUNE_CACHE"):
        return Path(os.environ["MODALTUNE_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "modaltune"
