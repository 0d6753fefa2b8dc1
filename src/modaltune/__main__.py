"""``python -m modaltune``: the ``modaltune`` command, as launchers need it
(``accelerate launch --multi_gpu --num_processes 2 -m modaltune train ...``)."""

from modaltune.cli import main

main()
