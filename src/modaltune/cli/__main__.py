"""``python -m modaltune.cli``: the ``modaltune`` command."""

from modaltune.cli import main

main()
