"""The offline end-to-end demo (``modaltune demo``, ``make demo``): scaffolding, not product API.

``clip`` pretrains a small CLIP on the synthetic shapes world and adapts it every way; ``vl``
trains a VQA and a captioning model on the same world.
"""

from modaltune.testing.demo.clip import KEEP, STRATEGIES, run_demo

__all__ = ["KEEP", "STRATEGIES", "run_demo"]
