"""Conversations: the value a chat example holds, its registered field, and the record layouts read.

A `Conversation` is a tuple of turns, each a role (``system``, ``user``, ``assistant``) and its text,
with an ``<image>`` placeholder where each image goes, images in placeholder order. The example
keeps the images as media references ``image``, ``image#1``, ``image#2``… (`image_names`; the
decoder registry reads ``image#1`` as kind ``image``), so batching, validation and the image
checks see every image of the conversation. A row without images is text-only chat data (valid:
general instruction data mixed in to keep a model's chat skills).

Two record layouts become conversations (`parse_record`), in a ``.json`` list or a ``.jsonl``:

* LLaVA: ``{"image": "a.jpg" | "images": [...], "conversations": [{"from": "human" | "gpt" |
  "system", "value": "<image>\\nWhat is …"}]}`` (ShareGPT's ``user`` / ``assistant`` are read too);
* OpenAI-style messages (LLaMA-Factory, TRL): ``{"messages": [{"role": "user", "content":
  [{"type": "image"}, {"type": "text", "text": "…"}]}], "images": [...]}``; content may be a plain
  string with ``<image>`` placeholders, and an image part may carry its own path (``"image"``,
  ``"path"`` or ``"url"``) when there is no ``images`` list.

What is wrong with a conversation is a reason code from ``data.validate.REASONS``:
``image_placeholder_mismatch``, ``bad_role_order``, ``empty_turn`` (``too_long`` needs the model's
processor: `modaltune.tasks.chat_encoding` raises it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modaltune.data.fields import Field, FieldError, inside_root, register_field

IMAGE_PLACEHOLDER = "<image>"
ROLES = ("system", "user", "assistant")
#: Role words of the layouts read → role.
ROLE_ALIASES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "bot": "assistant",
                "model": "assistant", "system": "system"}


@dataclass(frozen=True)
class Turn:
    """One message: its role and its text, ``<image>`` placeholders where images go."""

    role: str
    text: str

    @property
    def image_count(self) -> int:
        return self.text.count(IMAGE_PLACEHOLDER)

    def parts(self) -> list[dict[str, str]]:
        """The text as typed content parts in order: ``{"type": "image"}`` per placeholder, text between."""
        parts: list[dict[str, str]] = []
        for k, piece in enumerate(self.text.split(IMAGE_PLACEHOLDER)):
            if k:
                parts.append({"type": "image"})
            if piece:
                parts.append({"type": "text", "text": piece})
        return parts


@dataclass(frozen=True)
class Conversation:
    """Turns in order; see the module docstring for what is valid (`problem`)."""

    turns: tuple[Turn, ...]

    @classmethod
    def of(cls, *turns: tuple[str, str]) -> Conversation:
        """``Conversation.of(("user", "<image>\\nWhat?"), ("assistant", "A cat."))``."""
        return cls(tuple(Turn(role, text) for role, text in turns))

    @classmethod
    def from_messages(cls, messages: Sequence[Mapping[str, Any]]) -> Conversation:
        """From Hugging Face / OpenAI chat messages (``{"role", "content"}``, content a string with
        ``<image>`` placeholders or typed parts); `FieldError` when one is malformed."""
        conversation, _paths = parse_messages(list(messages), root=Path("."), column="messages")
        return conversation

    @classmethod
    def from_question(cls, question: str, *, images: int = 1) -> Conversation:
        """A one-turn conversation asking ``question`` about ``images`` images (placeholders put in
        front unless the question holds them already)."""
        missing = max(0, images - question.count(IMAGE_PLACEHOLDER))
        return cls((Turn("user", IMAGE_PLACEHOLDER * missing + ("\n" if missing else "") + question),))

    @property
    def image_count(self) -> int:
        return sum(t.image_count for t in self.turns)

    @property
    def messages(self) -> list[dict[str, Any]]:
        """The Hugging Face chat layout ``apply_chat_template`` takes: typed content parts per message."""
        return [{"role": t.role, "content": t.parts()} for t in self.turns]

    @property
    def has_answer(self) -> bool:
        """Whether the conversation ends with an assistant turn (something to learn or score)."""
        return bool(self.turns) and self.turns[-1].role == "assistant"

    def then(self, role: str, text: str) -> Conversation:
        """This conversation with one more turn (the terminal chat's history)."""
        return Conversation((*self.turns, Turn(role, text)))

    def assistant_indices(self) -> list[int]:
        return [i for i, t in enumerate(self.turns) if t.role == "assistant"]

    def prompt(self) -> Conversation:
        """What a model answers: the conversation without its final assistant turn (as it is when it
        ends with a user turn)."""
        return Conversation(self.turns[:-1]) if self.has_answer else self

    @property
    def reference(self) -> str | None:
        """The final assistant turn's text (the reference answer), or None when it ends on a question."""
        return self.turns[-1].text if self.has_answer else None

    def problem(self, images: int) -> FieldError | None:
        """Why this conversation with ``images`` images cannot be trained on, or None."""
        if not self.turns:
            return FieldError("empty_turn", "the conversation has no turns")
        for i, turn in enumerate(self.turns):
            if not turn.text.replace(IMAGE_PLACEHOLDER, "").strip() and not (turn.role == "user" and turn.image_count):
                return FieldError("empty_turn", f"turn {i + 1} ({turn.role}) is empty")
        order = _role_order_problem(self.turns)
        if order:
            return FieldError("bad_role_order", order)
        for i, turn in enumerate(self.turns):
            if turn.role != "user" and turn.image_count:
                return FieldError("image_placeholder_mismatch",
                                  f"turn {i + 1} ({turn.role}) holds {IMAGE_PLACEHOLDER}; images go in user turns")
        if self.image_count != images:
            return FieldError(
                "image_placeholder_mismatch",
                f"{self.image_count} {IMAGE_PLACEHOLDER} placeholder(s) in the user turns but {images} image(s) given; "
                f"write one {IMAGE_PLACEHOLDER} where each image goes, in the order the images are listed")
        return None


def _role_order_problem(turns: Sequence[Turn]) -> str | None:
    roles = [t.role for t in turns]
    body = roles[1:] if roles[0] == "system" else roles
    if "system" in body:
        return f"a system turn at position {roles.index('system', 1 if roles[0] == 'system' else 0) + 1}; " \
               f"a system prompt may only come first"
    if not body:
        return "only a system prompt, no user and assistant turns"
    for i, role in enumerate(body):
        expected = "user" if i % 2 == 0 else "assistant"
        if role != expected:
            offset = len(roles) - len(body)
            return (f"turn {i + offset + 1} is {role} where {expected} was expected; turns must alternate user, "
                    f"assistant, … (after an optional system prompt)")
    if body[-1] != "assistant":
        return "the conversation ends with a user turn: there is no answer to learn"
    return None


# ---- the example's images -------------------------------------------------------------------------


def image_names(n: int) -> list[str]:
    """Media reference names of an example's ``n`` images: ``image``, ``image#1``, ``image#2``…"""
    return ["image" if k == 0 else f"image#{k}" for k in range(n)]


def _image_index(name: str) -> int | None:
    if name == "image":
        return 0
    head, sep, tail = name.partition("#")
    return int(tail) if head == "image" and sep and tail.isdigit() else None


def ordered_images(media: Mapping[str, Any]) -> list[Any]:
    """The image values of an example's media (paths, or decoded images) in placeholder order."""
    indexed = sorted((i, v) for name, v in media.items() if (i := _image_index(name)) is not None)
    return [v for _, v in indexed]


# ---- the field ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConversationField(Field):
    """A chat conversation: a list of LLaVA ``{"from", "value"}`` or ``{"role", "content"}`` messages
    (parsed into a `Conversation`); what is wrong with it, given the example's images, is `problem`."""

    types: tuple[type, ...] = (list,)
    type_words: str = "list of messages"

    def parse(self, value: Any, *, root: Path, column: str | None = None) -> Any:
        if value is None:
            return None
        conversation, _paths = parse_messages(value, root=root, column=column or self.columns[0])
        return conversation

    def is_empty(self, value: Any) -> bool:
        return isinstance(value, Conversation) and not value.turns

    def problem(self, example: Any) -> FieldError | None:
        value = example.get(self.name)
        if value is None:
            return FieldError("missing_field", "no 'conversations' or 'messages' value")
        if not isinstance(value, Conversation):
            return FieldError("bad_json", f"'{self.shown}' is a {type(value).__name__}, not a conversation")
        return value.problem(len(ordered_images(example.media)))


CONVERSATION = register_field(ConversationField("conversation", columns=("conversation", "conversations", "messages"),
                                                empty_reason="empty_turn"))


# ---- record layouts -------------------------------------------------------------------------------


def parse_messages(value: Any, *, root: Path, column: str) -> tuple[Conversation, list[Path]]:
    """A list of messages in either layout → the conversation and the image paths its parts carry
    (OpenAI-style ``{"type": "image", "image": "a.png"}``; LLaVA messages carry none)."""
    if not isinstance(value, list):
        raise FieldError("bad_json", f"{column!r} must be a list of messages, got {type(value).__name__}")
    turns: list[Turn] = []
    paths: list[Path] = []
    for i, message in enumerate(value):
        where = f"{column}[{i}]"
        if not isinstance(message, dict):
            raise FieldError("bad_json", f"{where} must be an object, got {type(message).__name__}")
        if "from" in message or "value" in message:
            role_word, content = message.get("from"), message.get("value")
        else:
            role_word, content = message.get("role"), message.get("content")
        if not isinstance(role_word, str):
            raise FieldError("bad_json", f"{where} has no role ('from' or 'role' string)")
        role = ROLE_ALIASES.get(role_word.strip().lower())
        if role is None:
            raise FieldError("bad_role_order", f"{where} has role {role_word!r}; use human|gpt|system "
                                               f"(LLaVA) or user|assistant|system")
        text, part_paths = _content_text(content, where=where, root=root)
        turns.append(Turn(role, text))
        paths += part_paths
    return Conversation(tuple(turns)), paths


def _content_text(content: Any, *, where: str, root: Path) -> tuple[str, list[Path]]:
    if content is None:
        return "", []
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise FieldError("bad_json", f"{where} content must be a string or a list of parts, "
                                     f"got {type(content).__name__}")
    pieces: list[str] = []
    paths: list[Path] = []
    for j, part in enumerate(content):
        if isinstance(part, str):
            pieces.append(part)
            continue
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise FieldError("bad_json", f"{where}.content[{j}] is a text part without a 'text' string")
            pieces.append(text)
        elif kind in ("image", "image_url"):
            pieces.append(IMAGE_PLACEHOLDER)
            ref = part.get("image") or part.get("path") or part.get("url") or part.get("image_url")
            if isinstance(ref, dict):
                ref = ref.get("url")
            if isinstance(ref, str) and ref:
                paths.append(_media_path(ref, root, f"{where}.content[{j}]"))
        else:
            raise FieldError("bad_json", f"{where}.content[{j}] must be a {{'type': 'text' | 'image'}} part, "
                                         f"got {part!r:.80}")
    return "".join(pieces), paths


def _media_path(value: str, root: Path, where: str) -> Path:
    resolved = inside_root(value.strip(), root)
    if resolved is None:
        raise FieldError("path_escapes_root", f"{where} path {value!r} points outside {root}; image paths must be "
                                              f"relative to the data file's folder and stay inside it")
    return resolved


def _image_list(record: Mapping[str, Any], root: Path) -> list[Path] | None:
    """The record's ``images`` list or ``image`` (a string or a list), or None when it has neither."""
    for key in ("images", "image"):
        if key not in record or record[key] is None:
            continue
        value = record[key]
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
            raise FieldError("bad_json", f"{key!r} must be a path or a list of paths, got {type(value).__name__}")
        return [_media_path(v, root, key) for v in items if v.strip()]
    return None


def parse_record(record: Mapping[str, Any], *, root: Path) -> tuple[Conversation, list[Path]]:
    """One LLaVA or messages record → (conversation, image paths in order); `FieldError` when it is
    malformed (``bad_json``, ``bad_role_order``, ``path_escapes_root``). Whether the conversation is
    usable (placeholders against images, role order, empty turns) is `Conversation.problem`'s call."""
    key = next((k for k in ("conversations", "messages", "conversation") if k in record), None)
    if key is None:
        raise FieldError("missing_field", "no 'conversations' (LLaVA) or 'messages' list")
    conversation, part_paths = parse_messages(record[key], root=root, column=key)
    listed = _image_list(record, root)
    if listed is not None and part_paths:
        raise FieldError("bad_json", "images are given both in an 'images' list and inside the message parts; "
                                     "keep one of the two")
    system = record.get("system")
    has_system = bool(conversation.turns) and conversation.turns[0].role == "system"
    if isinstance(system, str) and system.strip() and not has_system:
        conversation = Conversation((Turn("system", system), *conversation.turns))
    return conversation, listed if listed is not None else part_paths


def looks_like_chat(records: Iterable[Any]) -> bool:
    """Whether records are chat records: objects with a ``conversations`` or ``messages`` list."""
    seen = False
    for record in records:
        if not isinstance(record, dict):
            return False
        if not any(isinstance(record.get(k), list) for k in ("conversations", "messages")):
            return False
        seen = True
    return seen
