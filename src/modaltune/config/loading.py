"""Building a config: YAML file (nested, or the flat layout of earlier runs), then flags, then
dotted overrides; every error names the key, option or file it comes from."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from modaltune.config.train import TrainConfig, UnknownKey, config_model, merge, nest, path_of, set_path
from modaltune.errors import ConfigError

_NULLS = {"null", "none", "~"}


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path} must be a mapping of field: value")
    return loaded


def describe(error: ValidationError, source: str, names: Mapping[str, str]) -> str:
    """One line per error: the setting's dotted path and, in brackets, how the user gave it when that
    differs (``optim.lr [--optim.lr]``, ``data.format [--data-format]``, ``optim.lr [lr in old.yaml]``)."""
    lines = [f"invalid config ({source}):"]
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "config"
        got = f" (got {item['input']!r})" if "input" in item and item["loc"] else ""
        message = item["msg"].removeprefix("Value error, ")
        origin = f" [{names[where]}]" if names.get(where, where) != where else ""
        lines.append(f"  {where}{origin}: {message}{got}")
    return "\n".join(lines)


def parse_value(text: Any) -> Any:
    """A value given on the command line: ``null``/``none``/``~`` is None, anything else is left to
    the field's validation (``"3e-5"`` -> 3e-05, ``"true"`` -> True)."""
    return None if isinstance(text, str) and text.strip().lower() in _NULLS else text


def build_config(file: str | Path | None = None, *, dotted: Mapping[str, Any] | None = None,
                 flag_names: Mapping[str, str] | None = None, **overrides: Any) -> TrainConfig:
    """The run config: the YAML ``file`` (if any), then every flag in ``overrides`` that is not None
    (flat keys such as ``lr`` or dotted paths such as ``optim.lr``), then ``dotted``, the
    ``--section.key value`` options of the command line (their values parsed by :func:`parse_value`).
    ``flag_names`` (flat key -> command-line flag) lets messages name the flag a value came from.

    Errors are :class:`ConfigError` naming the key, option or file."""
    loaded: dict[str, Any] = {}
    source = "flags"
    if file is not None:
        loaded = _read_yaml(Path(file))
        source = f"{file} + flags"
    flags = {k: v for k, v in overrides.items() if v is not None}
    dotted = {k.replace("-", "_"): parse_value(v) for k, v in (dotted or {}).items()}
    task = dotted.get("task", flags.get("task", loaded.get("task")))
    tree: dict[str, Any] = {}
    names: dict[str, str] = {}  # dotted path -> the name the user gave it
    for layer, where in ((loaded, str(file)), (flags, "flags"), (dotted, "dotted")):
        try:
            nested = nest(layer, task)
        except UnknownKey as exc:
            raise ConfigError(_unknown_message(exc, where)) from None
        for key, value in layer.items():
            if not isinstance(value, Mapping):
                path = path_of(str(key), task)
                if where == "dotted":
                    names[path] = f"--{key}"
                elif where == "flags":
                    names[path] = (flag_names or {}).get(str(key), f"--{str(key).replace('_', '-')}")
                elif key != path:
                    names[path] = f"{key} in {where}"
        merge(tree, nested)
    try:
        return config_model().model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(describe(exc, source, names)) from None


def _unknown_message(exc: UnknownKey, where: str) -> str:
    if where == "dotted":
        return f"{exc} (a --section.key option)"
    return f"{exc} (in {where})"


def overrides_from_args(args: list[str]) -> dict[str, str]:
    """``--section.key value`` / ``--section.key=value`` pairs of the leftover command-line tokens.

    A dotted option with no value (the last token, or followed by another option) is a switch: true.
    Anything else left over is a usage error naming it, with the nearest known option."""
    out: dict[str, str] = {}
    i = 0
    while i < len(args):
        token = args[i]
        if not token.startswith("--") or "." not in token.partition("=")[0]:
            raise ConfigError(f"unexpected option or argument {token!r}"
                              + _flag_hint(token))
        key, eq, value = token[2:].partition("=")
        if not eq:
            if i + 1 < len(args) and not args[i + 1].startswith("--"):
                value, i = args[i + 1], i + 1
            else:
                value = "true"
        out[key.replace("-", "_")] = value
        i += 1
    for key in out:
        try:
            path_of(key, None)
        except UnknownKey as exc:
            raise ConfigError(f"--{key}: {exc}") from None
    return out


def _flag_hint(token: str) -> str:
    if not token.startswith("--"):
        return ""
    try:
        path_of(token[2:].replace("-", "_").partition("=")[0], None)
    except UnknownKey as exc:
        hint = str(exc).partition(";")[2].strip()
        return f"; {hint}" if hint else ""
    return ""


__all__ = ["build_config", "overrides_from_args", "parse_value", "set_path"]
