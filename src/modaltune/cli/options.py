"""Command-line options generated from the config model, so each setting is declared once.

Every field of a config section (and of each registered task's ``Options``) becomes a classic flag
named after its flat key (``--lr``, ``--data-format``, ``--prompt-template``) with the field's
``description`` as help; :func:`config_options` adds them to a command. Any setting can also be
given as ``--section.key value`` (parsed from the leftover arguments by
:func:`modaltune.config.overrides_from_args`).
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable, Container
from dataclasses import dataclass
from typing import Any, Literal, Optional, TypeVar, Union, get_args, get_origin

import typer

#: Context settings of a command that takes ``--section.key value`` overrides.
DOTTED = {"allow_extra_args": True, "ignore_unknown_options": True}
DOTTED_HELP = ("Every setting can also be given as --section.key value (e.g. --optim.lr 3e-5, --model.dtype bf16, "
               "--classify.prompt_template 'a sound of {}'); these win over --config and the flags above.")

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class OptionSpec:
    """One classic flag: the keyword the command receives (the flat key), its spellings and help."""

    dest: str
    decls: tuple[str, ...]
    type: Any
    help: str
    section: str  # a config section, "task", or "tasks" (an option some task contributes)

    @property
    def panel(self) -> str:
        fixed = {"task": "task", "tasks": "task options (--TASK.KEY)"}
        return fixed.get(self.section, f"{self.section} (--{self.section}.KEY)")


def tasks_help() -> str:
    """The registered tasks, as help texts list them."""
    from modaltune.tasks.base import list_tasks

    return " | ".join(list_tasks())


def _kind(annotation: Any) -> tuple[Any, list[str]]:
    """The click-facing type of a field annotation and its choices (a Literal's values)."""
    args = [a for a in (get_args(annotation) if get_origin(annotation) in (Union, types.UnionType) else (annotation,))
            if a is not type(None)]
    choices = [str(v) for a in args if get_origin(a) is Literal for v in get_args(a)]
    plain = [a for a in args if get_origin(a) is not Literal]
    if plain == [bool]:
        return bool, choices
    if len(plain) == 1 and plain[0] in (int, float) and not choices:
        return plain[0], choices
    return str, choices


def _help(info: Any, choices: list[str]) -> str:
    text = info.description or ""
    if choices and not all(c in text for c in choices):
        text = f"{text}: {' | '.join(choices)}" if text else " | ".join(choices)
    default = None if info.is_required() else info.get_default(call_default_factory=True)
    if default is not None and not isinstance(default, bool) and "default" not in text:
        text += f" (default {default})"
    return text


def _spec(flat: str, info: Any, section: str, help_text: str | None = None) -> OptionSpec:
    kind, choices = _kind(info.annotation)
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    name = flat.replace("_", "-")
    # "flag" may list several spellings, space-separated ("--towers --components")
    decls = tuple(str(extra["flag"]).split()) if "flag" in extra else ((f"--{name}/--no-{name}",) if kind is bool
                                                           else (f"--{name}",))
    return OptionSpec(flat, decls, kind, help_text or _help(info, choices), section)


def option_specs() -> dict[str, OptionSpec]:
    """Every classic flag of the run config, by flat key, in the order of the config's sections."""
    from modaltune.config import SECTIONS
    from modaltune.config.sections import flat_name
    from modaltune.config.train import task_sections

    specs = {"task": OptionSpec("task", ("--task",), str, f"what to learn: {tasks_help()}", "task")}
    for section, cls in SECTIONS.items():
        for field, info in cls.model_fields.items():
            flat = flat_name(field, info)
            specs[flat] = _spec(flat, info, section)
    owners: dict[str, list[str]] = {}
    first: dict[str, Any] = {}
    for task, options in task_sections().items():
        for field, info in options.model_fields.items():
            owners.setdefault(field, []).append(task)
            first.setdefault(field, info)
    for field, info in first.items():
        names = " / ".join(owners[field])
        kind, choices = _kind(info.annotation)
        specs[field] = _spec(field, info, "tasks", f"{names}: {_help(info, choices)}")
    return specs


def config_options(*, sections: Container[str] | None = None, only: Container[str] | None = None,
                   exclude: Container[str] = ()) -> Callable[[F], F]:
    """Add the config's classic flags to a typer command that takes them as ``**flags``: all of them,
    or those of ``sections`` (names of config sections, ``"task"``, ``"tasks"`` for every task's
    options) plus the flat keys in ``only``; less ``exclude``. A parameter the command declares
    itself keeps its own definition."""
    def wanted(spec: OptionSpec) -> bool:
        if spec.dest in exclude:
            return False
        if sections is None and only is None:
            return True
        return spec.section in (sections or ()) or spec.dest in (only or ())

    def decorate(fn: F) -> F:
        signature = inspect.signature(fn, eval_str=True)
        params = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        taken = {p.name for p in params}
        added = [
            inspect.Parameter(
                spec.dest, inspect.Parameter.KEYWORD_ONLY, annotation=Optional[spec.type],  # noqa: UP045
                default=typer.Option(None, *spec.decls, help=spec.help, rich_help_panel=spec.panel,
                                     show_default=False))
            for spec in option_specs().values()
            if spec.dest not in taken and wanted(spec)]
        fn.__signature__ = signature.replace(parameters=[*params, *added])  # type: ignore[attr-defined]
        return fn

    return decorate
