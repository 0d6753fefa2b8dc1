"""What the chat family (visual instruction tuning: LLaVA, Qwen2-VL, Idefics3, PaliGemma) does not export.

A chat answer is generated token by token: the image tower and projector make image features that
are spliced into the prompt's embeddings at the image placeholders, then the language model runs
once per new token with a key/value cache. That loop around several graphs is not what this runtime
(fixed graphs, then the task's scoring) does, so ``export --format onnx`` refuses a chat model with
the reason and what to use instead.
"""

from __future__ import annotations

from modaltune.export.registry import NotExported, register_onnx


@register_onnx
class ChatExporter(NotExported):
    task = "chat"
    reason = ("chat models (LLaVA-style visual instruction tuning) are not exported to ONNX: an answer is "
              "generated token by token by the language model with a key/value cache, after the image tower "
              "and projector's features are spliced into the prompt at its <image> placeholders, a loop this "
              "runtime does not implement. Serve the PyTorch run instead (`modaltune serve RUN` batches "
              "requests), or export the run's merged model/ folder with Hugging Face optimum "
              "(`optimum-cli export onnx --model RUN/model OUT`), which writes a decoder-with-cache layout "
              "for the language model where it supports the architecture")
