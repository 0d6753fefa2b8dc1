"""The offline end-to-end demo (``modaltune demo``, ``make demo``): scaffolding, not product API.

``clip`` (its parts in ``clip_*``) pretrains a small CLIP on the synthetic shapes world and adapts it
every way, in two regimes; ``sections`` lists the parts that need no pretrained base (``vl``: VQA and
captioning, ``audio``: sound classification, ...), which run beside the pretraining; ``workers`` runs
the parts side by side.
"""

from modaltune.testing.demo.clip import KEEP, STRATEGIES, run_demo

__all__ = ["KEEP", "STRATEGIES", "run_demo"]
