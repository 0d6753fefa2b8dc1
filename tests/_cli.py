"""Run the `modaltune` CLI in-process (shared by conftest's run_cli fixture and test_cli)."""

from __future__ import annotations

import sys

from modaltune.cli import main


def invoke(capsys, *args: str) -> tuple[int, str, str]:
    """``modaltune ARGS`` with its exit code and captured stdout/stderr."""
    old = sys.argv
    sys.argv = ["modaltune", *args]
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = old
    out, err = capsys.readouterr()
    return code, out, err
