"""Options of today's task families (a task contributes them as its ``Options`` class attribute).

They become config sections named after the task (``classify.prompt_template``,
``caption.num_beams``); their fields reach the task's constructor as keyword arguments. A new family
declares its own ``Options`` beside its task class; nothing in the config or CLI lists them.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class TaskOptions(BaseModel):
    """Base of a task's options: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ClassifyOptions(TaskOptions):
    prompt_template: str | None = Field(default=None, description=(
        "class prompt with {} for the label (default: a saved classifier's, else the model's own for its "
        "media: 'a photo of a {}.', 'the sound of {}')"))


class GenerationOptions(TaskOptions):
    """Text generation (caption, generative vqa); None: the model's saved setting or the task default."""

    num_beams: int | None = Field(default=None, ge=1, description="beam size when generating text (default 1)")
    max_new_tokens: int | None = Field(
        default=None, ge=1, description="longest generated output (default 30 tokens for caption, 10 for vqa)")
