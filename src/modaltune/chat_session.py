"""A multi-turn conversation with a chat model (``modaltune chat``): the history is kept, and each
turn may bring images. The terminal command is a thin loop over `ChatSession`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from modaltune.errors import ConfigError, DataError


class ChatSession:
    """The conversation so far and the images it carries, in placeholder order.

    ``ask`` adds a user turn (new images placed before its text, as LLaVA data has them), generates
    the answer with the model's saved generation settings, and adds it as the assistant turn.
    """

    def __init__(self, task: Any, loaded: Any, *, system: str | None = None) -> None:
        from modaltune.data.conversation import Conversation

        if getattr(task, "name", None) != "chat":
            raise ConfigError(f"modaltune chat needs a chat model; this one was trained for task {task.name!r}")
        self.task, self.loaded = task, loaded
        self.system = system
        self.start = Conversation.of(("system", system)) if system else Conversation(())
        self.conversation = self.start
        self.images: list[Any] = []

    @property
    def messages(self) -> list[dict[str, Any]]:
        return [m for m in self.conversation.messages if m["role"] != "system"]

    def ask(self, text: str, images: Sequence[str | Path] = ()) -> str:
        """The model's answer to ``text`` (about ``images``, if given), with every earlier turn as context."""
        from modaltune.data.conversation import IMAGE_PLACEHOLDER
        from modaltune.tasks.chat_batch import answer

        if not text.strip():
            raise DataError("an empty message: type a question or an instruction")
        decoded = [load_image(path) for path in images]
        turn = (IMAGE_PLACEHOLDER * len(decoded) + "\n" if decoded else "") + text
        asked = self.conversation.then("user", turn)
        reply = answer(self.loaded, asked, [*self.images, *decoded], self.loaded.state["generation"])
        self.conversation = asked.then("assistant", reply or " ")
        self.images.extend(decoded)
        return reply

    def reset(self) -> None:
        """Forget the conversation (the system prompt stays)."""
        self.conversation = self.start
        self.images = []


def load_image(path: str | Path) -> Any:
    """An image file decoded as training decodes it, or a DataError with its reason code."""
    from modaltune.data.media import MediaError, get_decoder

    try:
        return get_decoder("image").load(Path(path))
    except MediaError as exc:
        raise DataError(f"{path}: {exc.reason}: {exc.detail}") from None


def open_chat(model_or_run: str | Path, *, system: str | None = None, max_new_tokens: int | None = None,
              num_beams: int | None = None, temperature: float | None = None) -> ChatSession:
    """A conversation with the chat model of a run directory (or its model/, or a base chat model)."""
    from modaltune.api import load_model
    from modaltune.run import resolve_model_dir

    source = resolve_model_dir(model_or_run)
    saved = (source / "modaltune.json").is_file()
    task, loaded = load_model(model_or_run, task=None if saved else "chat")
    # The session's own settings win over those saved with the model, for this conversation only.
    given = {"max_new_tokens": max_new_tokens, "num_beams": num_beams, "temperature": temperature}
    loaded.state["generation"] = {**loaded.state.get("generation", {}),
                                  **{k: v for k, v in given.items() if v is not None}}
    return ChatSession(task, loaded, system=system)
