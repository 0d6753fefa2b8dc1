"""Scaffolding stays out of the product: only `modaltune demo` reaches into `modaltune.testing`."""

from __future__ import annotations

import re
from pathlib import Path

import modaltune

PACKAGE = Path(modaltune.__file__).resolve().parent
SCAFFOLDING = ("tiny.py", "tiny_vl.py", "demo.py", "demo_vl.py", "bench_transfer.py", "data/synthetic.py")


def test_product_modules_never_import_the_testing_package():
    imports = re.compile(r"^\s*(from modaltune\.testing|import modaltune\.testing|from modaltune import testing)", re.M)
    offenders = {}
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative.startswith("testing/"):
            continue
        found = [line.strip() for line in imports.findall(path.read_text())]
        if found:
            offenders[relative] = found
    # The CLI's `demo` command is the one way in, imported when the command runs.
    assert offenders == {"cli/__init__.py": ["from modaltune.testing"]}
    assert "    from modaltune.testing.demo import run_demo" in (PACKAGE / "cli" / "__init__.py").read_text()


def test_scaffolding_left_the_product_package():
    assert not [name for name in SCAFFOLDING if (PACKAGE / name).exists()]
    for name in ("tiny_clip.py", "tiny_vl.py", "synthetic.py", "conformance.py", "demo/clip.py", "demo/vl.py"):
        assert (PACKAGE / "testing" / name).is_file(), name
