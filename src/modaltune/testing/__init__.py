"""Scaffolding for tests, the demo and the benchmarks: not part of modaltune's product API.

As ``transformers.testing_utils`` does for transformers, this subpackage holds what exercises the
library rather than what a user adapts models with:

* ``tiny_clip`` / ``tiny_vl``: small random models (CLIP; ViLT, BLIP, GIT) built offline from their
  configs, with tokenizers trained on given texts, saved in standard Hugging Face format;
* ``synthetic``: the procedural "shapes world" (images, captions, class folders, VQA corpora);
  ``synthetic_audio``: seeded sounds written in several formats and rates;
* ``conformance``: the per-task check every family passes (each strategy trains exactly its
  parameters, exports, reloads in plain transformers and evaluates to the same metrics);
* ``demo``: the offline end-to-end demo behind ``modaltune demo`` / ``make demo``.

Nothing in the product package imports from here; the CLI's ``demo`` command imports it lazily.
"""
