"""The official VQA (v1/v2) layout: a questions ``.json`` and an annotations ``.json`` side by side.

* questions (``v2_OpenEnded_mscoco_train2014_questions.json``): ``{"data_subtype": "train2014",
  "questions": [{"question_id", "image_id", "question"}, ...]}``;
* annotations (``v2_mscoco_train2014_annotations.json``): ``{"annotations": [{"question_id",
  "image_id", "answers": [{"answer": ...}, ...], "multiple_choice_answer", ...}, ...]}``.

Point ``--data`` at either file or at the folder holding the pair; the other file is found next to
it. A questions file alone (the test split) gives rows without answers. Images are COCO's
``COCO_<data_subtype>_<image_id:012d>.jpg``, looked up in ``<data_subtype>/``, ``images/<data_subtype>/``,
``images/`` and the folder itself, in that order. One row per question, id ``<questions file>:q<question_id>``;
``question_id``, ``image_id``, ``question_type``, ``answer_type`` and ``multiple_choice_answer`` are
kept in ``Row.extra``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from modaltune.data.fields import Field, as_fields, needs
from modaltune.data.readers.base import Reader, ReadResult, Source, dict_items
from modaltune.data.readers.records import LineError, rows_from_records
from modaltune.errors import DataError

_EXTRA_KEYS = ("question_type", "answer_type", "multiple_choice_answer")


def is_questions(data: Any) -> bool:
    """A VQA questions file: ``questions`` entries with ``question_id`` and ``question``."""
    items = dict_items(data.get("questions")) if isinstance(data, dict) else []
    return any("question_id" in q and "question" in q for q in items)


def is_annotations(data: Any) -> bool:
    """A VQA annotations file: ``annotations`` entries with ``question_id`` and ``answers``."""
    items = dict_items(data.get("annotations")) if isinstance(data, dict) else []
    return any("question_id" in a and "answers" in a for a in items)


class VqaReader(Reader):
    name = "vqa"
    summary = ("the official VQA questions + annotations .json pair (a folder holding both, or either file "
               "with the other beside it)")
    reads_folders = True

    def sniff(self, source: Source) -> bool:
        if source.is_dir:
            files = source.data_files()
            # Only a folder of nothing but .json files can be a pair; a single file is a manifest.
            if len(files) < 2 or any(p.suffix.lower() != ".json" for p in files):
                return False
            parsed = [source.child(p).json_or_none() for p in files]
            return any(is_questions(d) for d in parsed) and any(is_annotations(d) for d in parsed)
        if source.suffix != ".json":
            return False
        data = source.json_or_none()
        return is_questions(data) or is_annotations(data)

    def read(self, source: Source, *, require: Sequence[Field | str], id_prefix: str) -> ReadResult:
        questions, annotations = _pair(source)
        q_data = questions.json()
        a_data = annotations.json() if annotations is not None else None
        if a_data is None and needs(as_fields(require), "answers"):
            raise DataError(
                f"{questions.path} holds VQA questions, but no annotations file (with 'annotations' entries "
                f"holding 'question_id' and 'answers') is next to it, and this task needs answers. "
                f"Put the matching annotations .json in {questions.path.parent}.")
        subtypes = {d.get("data_subtype") for d in (q_data, a_data) if isinstance(d, dict)} - {None}
        if len(subtypes) > 1:
            raise DataError(
                f"{questions.path} and {annotations.path if annotations else ''} are from different splits "
                f"(data_subtype {', '.join(sorted(map(str, subtypes)))}); use the questions and annotations "
                f"of the same split.")
        subtype = str(next(iter(subtypes), "")) or None
        return rows_from_records(
            _records(q_data, a_data, questions.path.parent, subtype, questions.path, annotations),
            path=questions.path, id_prefix=id_prefix, require=require)


def _pair(source: Source) -> tuple[Source, Source | None]:
    """The questions file and the annotations file (None if there is none) for ``source``."""
    folder = source if source.is_dir else None
    if folder is None:
        data = source.json()
        if is_questions(data) and is_annotations(data):
            return source, source
        folder_source = Source(source.path.parent)
        siblings = [folder_source.child(p) for p in folder_source.data_files()
                    if p.suffix.lower() == ".json" and p.resolve() != source.path.resolve()]
        if is_questions(data):
            partners = [s for s in siblings if is_annotations(s.json_or_none())]
            return source, _one(partners, "annotations", source, data)
        if is_annotations(data):
            partners = [s for s in siblings if is_questions(s.json_or_none())]
            found = _one(partners, "questions", source, data)
            if found is None:
                raise DataError(
                    f"{source.path} holds VQA annotations; their questions file (with 'questions' entries "
                    f"holding 'question_id' and 'question') must be next to it in {source.path.parent}.")
            return found, source
        raise DataError(f"{source.path} is neither a VQA questions file nor a VQA annotations file.")
    files = [folder.child(p) for p in folder.data_files() if p.suffix.lower() == ".json"]
    questions = [s for s in files if is_questions(s.json_or_none())]
    if len(questions) != 1:
        names = ", ".join(s.path.name for s in questions) or "none"
        raise DataError(
            f"{folder.path} should hold one VQA questions .json, found {len(questions)} ({names}); "
            f"point --data at the questions file to read.")
    annotations = [s for s in files if is_annotations(s.json_or_none()) and s is not questions[0]]
    return questions[0], _one(annotations, "annotations", questions[0], questions[0].json())


def _one(candidates: list[Source], what: str, beside: Source, data: Any) -> Source | None:
    """The one candidate; with several, the one of the same data_subtype; None when there is none."""
    if len(candidates) > 1:
        subtype = data.get("data_subtype") if isinstance(data, dict) else None
        same = [c for c in candidates if (c.json_or_none() or {}).get("data_subtype") == subtype]
        if subtype is not None and len(same) == 1:
            return same[0]
        names = ", ".join(c.path.name for c in candidates)
        raise DataError(
            f"Several VQA {what} files are next to {beside.path} ({names}); keep the one of its split only.")
    return candidates[0] if candidates else None


def _image_path(folder: Path, subtype: str | None, image_id: Any) -> str:
    """The image of ``image_id``, relative to ``folder``: the first place it exists, else the first guess."""
    try:
        name = f"COCO_{subtype}_{int(image_id):012d}.jpg" if subtype else f"{int(image_id):012d}.jpg"
    except (TypeError, ValueError):
        name = f"{image_id}.jpg"
    places = [f"{subtype}/", f"images/{subtype}/", "images/", ""] if subtype else ["images/", ""]
    for place in places:
        if (folder / place / name).is_file():
            return f"{place}{name}"
    return f"{places[0]}{name}"


def _records(
    q_data: Any, a_data: Any, folder: Path, subtype: str | None, q_path: Path, annotations: Source | None
) -> Iterator[tuple[str, dict[str, Any] | LineError]]:
    by_question: dict[Any, dict[str, Any]] = {}
    if a_data is not None:
        for ann in a_data.get("annotations", []):
            if isinstance(ann, dict) and "question_id" in ann:
                by_question[ann["question_id"]] = ann
    matched = 0
    for position, q in enumerate(q_data.get("questions", [])):
        key = f"q{q.get('question_id', f'#{position}')}" if isinstance(q, dict) else f"q#{position}"
        if not isinstance(q, dict):
            yield key, LineError("bad_json", f"question {position} is not a JSON object")
            continue
        if "image_id" not in q:
            yield key, LineError("missing_field", f"question {position} has no 'image_id'")
            continue
        record: dict[str, Any] = {"image": _image_path(folder, subtype, q["image_id"]),
                                  "question": q.get("question"),
                                  "question_id": q.get("question_id"), "image_id": q["image_id"]}
        ann = by_question.get(q.get("question_id"))
        if ann is not None:
            matched += 1
            record["answers"] = ann.get("answers")
            record.update({k: ann[k] for k in _EXTRA_KEYS if k in ann})
        elif a_data is not None:
            yield key, LineError("missing_field", f"question_id {q.get('question_id')!r} has no entry in "
                                 f"{annotations.path.name if annotations else 'the annotations'}")
            continue
        yield key, record
    if a_data is not None and by_question and matched == 0:
        raise DataError(
            f"{q_path} and {annotations.path if annotations else 'its annotations'} share no question_id: "
            f"they are not questions and answers of the same split.")
