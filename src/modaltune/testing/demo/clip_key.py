"""The cache key of the CLIP demo's pretrained base: a hash of everything that decides its weights, so a
second demo (and the transfer benchmark, on its own pinned base) reuses the model rather than pretraining
it again, and any change to what defines it pretrains a new one rather than reusing a wrong one."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

from modaltune.testing.demo.clip_specs import BaseSpec

#: Bump when the way the demo builds its base model changes in a way the spec does not capture.
CACHE_FORMAT = 1


def base_key(spec: BaseSpec) -> str:
    """Hash of everything that decides the base model's weights.

    The source code of the data generator and of the model/tokenizer builder stands in for their
    version: any change to how images, captions or the tokenizer come out gives a new key. Only
    their code counts (``code_fingerprint``), not where they live nor their comments, docstrings or
    type annotations: moving them (they were ``modaltune/data/synthetic.py`` and ``modaltune/tiny.py``)
    and annotating them kept every key, and so the base model the benchmarks recorded.
    """
    import torch
    import transformers

    from modaltune import __version__
    from modaltune.testing import synthetic, tiny_clip

    defining = {
        "format": CACHE_FORMAT,
        "spec": asdict(spec),
        "generator": _source_hash(synthetic.__file__),
        "builder": _source_hash(tiny_clip.__file__),
        "versions": {"modaltune": __version__, "torch": torch.__version__, "transformers": transformers.__version__},
    }
    text = json.dumps(defining, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


#: What the key held for the two defining files when the recorded base models were built: their raw
#: sha256 (as moved into modaltune.testing), under the fingerprint of their code. Typing-only edits
#: (903dac0) changed their bytes but nothing they build; code with the same fingerprint keeps the key.
_KEYED_AS = {
    "b8cdd5a1008c2be5e0480bf44355af4625ecdb9881793878afdf149c381be08a":  # testing/tiny_clip.py
    "4a3b90e6045828ba30788b09b3e486a8f948061b8d92545faab94e9c64e1c27b",
    "d36ab62564aabed865caf448f7b0c7f22323ae6093d9004a76738dc554d3f225":  # testing/synthetic.py
    "049ac577c44b42d1d7bea5e0860e17339cc6317a931846aabc709f4adc4fb8c4",
}


def _source_hash(path: str) -> str:
    """What stands for a defining file in the key: the fingerprint of its code, or the raw-bytes hash the
    recorded keys were made with while the code is the same."""
    fingerprint = code_fingerprint(Path(path).read_text(encoding="utf-8"))
    return _KEYED_AS.get(fingerprint, fingerprint)


def code_fingerprint(source: str) -> str:
    """sha256 of the code's syntax tree without what cannot change what it builds: docstrings, comments,
    type annotations of functions and ``typing`` imports. Any other edit gives a new fingerprint (and so
    a new key), as does a Python whose syntax trees print differently: a rebuilt base, never a wrong one."""
    import ast

    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            node.returns = None
            args = node.args
            for arg in [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]:
                if arg is not None:
                    arg.annotation = None
        body = getattr(node, "body", None)
        if (
            isinstance(body, list)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:] or [ast.Pass()]  # type: ignore[attr-defined]
    tree.body = [n for n in tree.body if not (isinstance(n, ast.ImportFrom) and n.module == "typing")]
    return hashlib.sha256(ast.dump(tree).encode()).hexdigest()
