"""What a measurement ran on, recorded beside every benchmark number so two runs can be compared."""

from __future__ import annotations

import os
import platform
from typing import Any


def machine_facts() -> dict[str, Any]:
    import torch
    import transformers

    # transformers' version is part of the cached demo base model's key: a new one re-pretrains it.
    return {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def describe(facts: dict[str, Any]) -> str:
    """One line for ``facts`` (also those recorded by older runs, which lack some keys)."""
    libraries = f"torch {facts['torch']}" + (f", transformers {facts['transformers']}"
                                             if facts.get("transformers") else "")
    python = f", Python {facts['python']}" if facts.get("python") else ""
    return (f"{facts['platform']}, {facts['cpus']} CPUs ({facts['threads']} torch threads), {libraries}, "
            f"GPU {facts['gpu'] or 'none'}{python}")
