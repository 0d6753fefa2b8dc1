"""The model a server holds: loaded once, described for ``/info``, fed decoded uploads in batches.

Everything here goes through the task contract (``modaltune.tasks.base.Task``): what a request must
carry comes from the task's fields (the media kinds its model's processor reads, a question when the
task reads one) and from its per-request options (candidate labels or texts, where the task's
constructor takes them); predictions are ``task.predict``'s dicts. No family is named, so a family
registered later is served as it is.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modaltune.data.fields import QUESTION, MediaField, needs
from modaltune.data.media import MediaError, get_decoder, media_kinds
from modaltune.data.rows import Row
from modaltune.serve.limits import REASON_STATUS, ServeError, ServeLimits
from modaltune.tasks.base import Loaded, Task, create_task

#: Task constructor options a request may set (the CLI's --labels / --texts of `predict`), when the
#: task's constructor takes them: classify's candidate labels, retrieve's candidate texts.
REQUEST_OPTIONS = ("labels", "texts")
#: Attached models kept for recent per-request option sets (attaching re-encodes label prompts).
_ATTACHED_CACHE = 8
#: Bytes read to tell an upload's kind.
_SNIFF_BYTES = 64
#: A processor attribute (transformers' ProcessorMixin convention) → the media kind it reads.
_PROCESSOR_KINDS = {"image_processor": "image", "feature_extractor": "audio", "video_processor": "video"}


@dataclass
class Input:
    """One uploaded file as the client sent it, plus the field values that go with it."""

    data: bytes
    name: str  # shown in answers and messages only; never used on disk
    values: dict[str, Any] = field(default_factory=dict)  # e.g. {"question": "..."}


class Service:
    """A loaded model and what serving it needs; thread-safe where the server calls it from threads."""

    def __init__(self, task: Task, loaded: Loaded, *, source: str, limits: ServeLimits,
                 run_root: Path | None = None, base_options: dict[str, Any] | None = None) -> None:
        self.task = task
        self.loaded = loaded
        self.source = source
        self.limits = limits
        self.run_root = run_root
        self.base_options = dict(base_options or {})
        self.kinds = self._media_kinds()
        self.options = [o for o in REQUEST_OPTIONS if o in _constructor_options(type(task))]
        self.needs_question = needs(task.fields, "question")
        # A task reading conversations answers a one-turn one made of a question, as `predict
        # --question` asks it; a request may send the whole conversation instead.
        self.conversation = needs(task.fields, "conversation")
        self.value_fields = {f.name: f for f in task.fields if not isinstance(f, MediaField)}
        if self.conversation:
            self.value_fields.setdefault("question", QUESTION)
        self._tmp = Path(tempfile.mkdtemp(prefix="modaltune-serve-"))  # mode 0700: this process only
        # Decoders use warnings.catch_warnings (process-global), so uploads are decoded one at a time.
        self._decode_lock = threading.Lock()
        self._attached: OrderedDict[str, tuple[Task, Loaded]] = OrderedDict()

    @classmethod
    def load(cls, model_or_run: str | Path, *, limits: ServeLimits, task: str | None = None,
             labels: list[str] | None = None, texts: list[str] | None = None, trust_remote_code: bool = False,
             **task_options: Any) -> Service:
        """Load a run directory, a saved model, or a base model with ``task`` (zero-shot) once;
        ``task_options`` are the task's own (num_beams, threshold, ...; None: the task's default)."""
        from modaltune.api import load_model

        instance, loaded = load_model(model_or_run, task=task, labels=labels, texts=texts,
                                      trust_remote_code=trust_remote_code, **task_options)
        given = {k: v for k, v in {**task_options, "texts": texts}.items() if v is not None}
        return cls(instance, loaded, source=str(model_or_run), limits=limits.check(),
                   run_root=_run_root(Path(model_or_run)), base_options=given)

    def close(self) -> None:
        shutil.rmtree(self._tmp, ignore_errors=True)

    # ---- what the model is --------------------------------------------------------------------

    def _media_kinds(self) -> list[str]:
        """The media kinds this model reads: the task's, narrowed by the processor's parts."""
        from modaltune.data.fields import media_kinds as task_kinds

        taken = list(task_kinds(self.task.fields))
        processor = self.loaded.processor
        read = {kind for attr, kind in _PROCESSOR_KINDS.items() if getattr(processor, attr, None) is not None}
        narrowed = [k for k in taken if k in read]
        return narrowed or taken

    def info(self) -> dict[str, Any]:
        """Task, model, labels, metrics and what a request carries: ``GET /info`` and the page's card."""
        run = _read_json(self.run_root / "metrics.json") if self.run_root else None
        run_facts = (run or {}).get("run") or {}
        config = _read_yaml(self.run_root / "config.yaml") if self.run_root else None
        base_model = run_facts.get("model") or ((config or {}).get("model") or {}).get("name")
        strategy = run_facts.get("strategy")
        return {
            "task": self.task.name,
            "family": self.task.family,
            "model": self.source,
            "base_model": base_model or self.source,
            "strategy": strategy.get("strategy") if isinstance(strategy, dict) else strategy,
            "labels": self._vocabulary("labels"),
            "texts": self.base_options.get("texts"),
            "primary_metric": self.task.primary_metric,
            "metrics": _scalars(run or {}),
            "zero_shot": _scalars((run or {}).get("zero_shot") or {}),
            "model_card": (self.run_root / "model" / "README.md").is_file() if self.run_root else False,
            "inputs": {"media": self.kinds, "question": self.needs_question or self.conversation,
                       "conversation": self.conversation, "options": self.options},
            "limits": self.limits.to_dict(),
        }

    # ---- requests -----------------------------------------------------------------------------

    def request_options(self, given: dict[str, Any]) -> dict[str, list[str]]:
        """The per-request options that differ from the loaded model's, validated."""
        out: dict[str, list[str]] = {}
        for name, value in given.items():
            if value is None or value == [] or value == "":
                continue
            if name not in self.options:
                takes = ", ".join(self.options) or "none"
                raise ServeError(422, "unknown_option", f"task {self.task.name} takes no {name!r} per request "
                                                        f"(it takes: {takes})")
            items = _as_list(value, name)
            if len(set(items)) != len(items):
                raise ServeError(422, "duplicate_option", f"{name} lists a value twice: {items}")
            if name == "labels" and self.task.uses_labels and len(items) < 2:  # a choice between classes
                raise ServeError(422, "too_few_labels", f"give at least 2 labels to choose between, got {items}")
            if items != self._vocabulary(name):
                out[name] = items
        return out

    def _vocabulary(self, name: str) -> list[str] | None:
        """The loaded model's current value of a request option: its labels (a detector calls them
        categories) or the candidate texts it was started with."""
        keys = ("labels", "categories") if name == "labels" else (name,)
        for key in keys:
            value = self.loaded.state.get(key, self.base_options.get(key))
            if isinstance(value, list):
                return [str(v) for v in value]
        return None

    def decode(self, item: Input, index: int) -> tuple[Row, dict[str, Any]]:
        """An upload → (example, decoded media), or a `ServeError` naming what is wrong with it.

        The bytes go to a private temp file with a name of the server's choosing (the client's name is
        never a path), are decoded and checked by the registered decoder of their kind, with the
        limits training uses, and the file is deleted before this returns."""
        if not item.data:
            raise ServeError(422, "empty_file", f"upload {item.name!r} is 0 bytes")
        kind = self._kind_of(item)
        options = {**self.loaded.media_options, "max_pixels": self.limits.max_pixels,
                   "max_seconds": self.limits.max_audio_seconds}
        fd, name = tempfile.mkstemp(dir=self._tmp, prefix="upload-")
        path = Path(name)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(item.data)
            with self._decode_lock:
                decoded = get_decoder(kind).load(path, **options)
        except MediaError as exc:
            detail = exc.detail.replace(str(path), f"upload {item.name!r}")
            raise ServeError(REASON_STATUS.get(exc.reason, 422), exc.reason, detail) from None
        except Exception as exc:  # damage no decoder foresaw is still the upload's fault, not the server's
            detail = str(exc).replace(str(path), f"upload {item.name!r}")
            raise ServeError(422, "undecodable", f"upload {item.name!r} could not be decoded: "
                                                 f"{type(exc).__name__}: {detail}") from None
        finally:
            path.unlink(missing_ok=True)
        row = Row(id=item.name, media={kind: path}, values=self._values(item, index))
        for value_field in self.value_fields.values():
            key = value_field.name
            if key not in row.values:
                continue
            # Checked on the whole row: a conversation's image placeholders are counted against the media.
            problem = _prompt_problem(row, key) if key == "conversation" else value_field.problem(row)
            if problem is not None:
                raise ServeError(422, problem.reason, f"input {index} ({item.name!r}): {problem.detail}")
        return row, {kind: decoded}

    def _kind_of(self, item: Input) -> str:
        head = item.data[:_SNIFF_BYTES]
        kind = next((k for k in media_kinds() if get_decoder(k).sniff(head)), None)
        wanted = " or ".join(self.kinds)
        if kind is None:
            raise ServeError(415, "unsupported_media", f"upload {item.name!r} is not a file this server can read: "
                                                      f"this model takes {wanted} files")
        if kind not in self.kinds:
            raise ServeError(415, "wrong_media_kind", f"upload {item.name!r} is {kind}, but this model "
                                                      f"({self.task.name}) takes {wanted} files")
        return kind

    def _values(self, item: Input, index: int) -> dict[str, Any]:
        from modaltune.data.fields import FieldError

        values: dict[str, Any] = {}
        for name, value in item.values.items():
            f = self.value_fields.get(name)
            if f is None or value is None:
                continue
            try:
                # No media path in a value is ever read: it resolves inside a folder that does not exist.
                values[name] = f.parse(value, root=self._tmp / "no-files", column=name)
            except FieldError as exc:
                raise ServeError(422, exc.reason, f"input {index} ({item.name!r}): {exc.detail}") from None
        asked = "question" in values or (self.conversation and "conversation" in values)
        if (self.needs_question or self.conversation) and not asked:
            also = " (or a 'conversation': a JSON list of messages)" if self.conversation else ""
            raise ServeError(422, "missing_field", f"task {self.task.name} answers a question about each "
                                                   f"{' or '.join(self.kinds)}: send a 'question'{also}")
        return values

    # ---- the model ----------------------------------------------------------------------------

    def run_batch(self, key: Hashable, items: list[tuple[Row, dict[str, Any]]]) -> list[dict]:
        """Predictions for one batch; ``key`` is the JSON of the per-request options. Runs on the
        batcher's model thread only."""
        from modaltune.inference import predict_items

        task, loaded = self._model_for(str(key))
        return predict_items(task, loaded, items)

    def _model_for(self, key: str) -> tuple[Task, Loaded]:
        options = json.loads(key)
        if not options:
            return self.task, self.loaded
        if key in self._attached:
            self._attached.move_to_end(key)
            return self._attached[key]
        # The loaded model's own settings (a classifier's prompt template) and the server's task options
        # (a detector's threshold) carry over; its vocabularies (labels, categories: lists) do not, since
        # the request's options replace them. The new task is attached to the same backbone (shared).
        accepted = _constructor_options(type(self.task))
        carried = {k: v for k, v in self.loaded.state.items() if k in accepted and not isinstance(v, list)}
        carried.update({k: v for k, v in self.base_options.items() if k in accepted})
        task = create_task(self.task.name, **{**carried, **options})
        pair = (task, task.attach(self.loaded))
        self._attached[key] = pair
        if len(self._attached) > _ATTACHED_CACHE:
            self._attached.popitem(last=False)
        return pair


def _prompt_problem(row: Row, name: str) -> Any:
    """What is wrong with a conversation to answer: the rules of training data (roles in turn, one
    placeholder per image), except that it ends with the user's turn the model answers."""
    from modaltune.data.conversation import Conversation, ordered_images
    from modaltune.data.fields import FieldError

    conversation = row.get(name)
    if not isinstance(conversation, Conversation):
        return FieldError("bad_json", f"{name!r} is not a conversation (a JSON list of messages)")
    if conversation.has_answer:
        return FieldError("bad_role_order", "the conversation ends with an assistant turn: end it with the "
                                            "user's turn to answer")
    return conversation.then("assistant", "(the answer)").problem(len(ordered_images(row.media)))


def option_key(options: dict[str, Any]) -> str:
    return json.dumps(options, sort_keys=True)


def _constructor_options(cls: type) -> set[str]:
    """The named keyword options of a task's constructor (its own and its bases' up to ``**options``)."""
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or klass is object:
            continue
        params = inspect.signature(init).parameters.values()
        names |= {p.name for p in params if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return names


def _as_list(value: Any, name: str) -> list[str]:
    """A list of strings from JSON (a list) or a form field (one per line, else comma-separated)."""
    if isinstance(value, str):
        parts = value.splitlines() if "\n" in value else value.split(",")
    elif isinstance(value, list) and all(isinstance(v, (str, int, float)) for v in value):
        parts = [str(v) for v in value]
    else:
        raise ServeError(422, "bad_option", f"{name} must be a list of strings or a comma-separated string")
    return [p.strip() for p in parts if p.strip()]


def _run_root(path: Path) -> Path | None:
    """The run directory of a run or of its ``model/`` folder, else None (a bare model)."""
    for root in (path, path.parent):
        if (root / "metrics.json").is_file() or (root / "config.yaml").is_file():
            return root
    return None


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _read_yaml(path: Path) -> dict[str, Any] | None:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    """The numbers of a metrics dict (no matrices, samples or nested sections)."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
