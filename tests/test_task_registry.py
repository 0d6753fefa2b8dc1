"""The task contract and registry: built-in families found without a hand-kept list, third-party
families added through an entry point, and the contract enforced by the base class."""

from __future__ import annotations

import logging
import sys
import textwrap
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from modaltune.tasks import base
from modaltune.tasks.base import Task, list_tasks, register, task_class

PLUGIN = '''
from modaltune.tasks.base import register
from modaltune.tasks.clip import ClassifyTask


@register("toy-classify")
class ToyClassify(ClassifyTask):
    """A third party's family: here, CLIP classification under another name."""
'''


@pytest.fixture
def fresh_registry(monkeypatch: pytest.MonkeyPatch):
    """The registry as a new process sees it, with whatever entry points the test installs."""
    list_tasks()  # the state restored afterwards must be a complete one
    monkeypatch.setattr(base, "_REGISTRY", {})
    monkeypatch.setattr(base, "_discovered", False)
    for name in [m for m in sys.modules if m.startswith("modaltune.tasks.") and m != "modaltune.tasks.base"]:
        monkeypatch.delitem(sys.modules, name)
    installed: list[EntryPoint] = []
    monkeypatch.setattr(base, "entry_points",
                        lambda group: [e for e in installed if e.group == group])
    return installed


def test_builtin_families_are_found_by_package_discovery(fresh_registry: list[EntryPoint]) -> None:
    assert list_tasks() == ["caption", "chat", "classify", "detect", "retrieve", "vqa"]
    assert all(issubclass(task_class(name), Task) for name in list_tasks())


def test_a_third_party_family_registers_through_an_entry_point(
    fresh_registry: list[EntryPoint], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "toy_family.py").write_text(textwrap.dedent(PLUGIN))
    monkeypatch.syspath_prepend(str(tmp_path))
    fresh_registry.append(EntryPoint(name="toy", value="toy_family", group=base.ENTRY_POINT_GROUP))
    assert "toy-classify" in list_tasks()
    assert task_class("toy-classify").primary_metric == "accuracy"


def test_a_broken_plugin_is_skipped_with_a_warning(
    fresh_registry: list[EntryPoint], caplog: pytest.LogCaptureFixture
) -> None:
    fresh_registry.append(EntryPoint(name="broken", value="no_such_module_xyz", group=base.ENTRY_POINT_GROUP))
    with caplog.at_level(logging.WARNING, logger="modaltune.tasks.base"):
        assert "classify" in list_tasks()
    assert "'broken'" in caplog.text and "skipped" in caplog.text


def test_only_task_subclasses_register_and_names_are_unique() -> None:
    with pytest.raises(TypeError, match="subclass of modaltune.tasks.Task"):
        register("not-a-task")(object)
    with pytest.raises(ValueError, match="already registered"):
        register("classify")(task_class("classify"))


def test_the_contract_is_enforced_and_optional_members_have_defaults() -> None:
    class Incomplete(Task):
        def load(self, source, *, scratch=False, trust_remote_code=False):  # type: ignore[override]
            raise AssertionError

    with pytest.raises(TypeError, match="abstract"):
        Incomplete()  # type: ignore[abstract]
    classify = task_class("classify")
    assert classify.options_from_rows([]) == {}
    caption_text = task_class("caption").fields[1]
    assert (caption_text.name, caption_text.shown, caption_text.empty_reason) == ("text", "caption", "empty_caption")
