"""What every section of a job spec shares: one base class and one error formatter.

Every problem of a job is a :class:`~radcluster.errors.SpecError` whose lines follow one
template: the key as the user wrote it (``cluster.workers``, ``train.preprocess.pca``), what
is wrong, and the fix: the closest valid key for an unknown one, what is accepted, or the
value that was given.
"""

from __future__ import annotations

from typing import Any, get_args

from pydantic import BaseModel, ConfigDict, ValidationError

from ..errors import did_you_mean


class Section(BaseModel):
    """A section of a job spec: unknown keys are errors, and a built spec never changes."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def section_model(annotation: Any) -> type[BaseModel] | None:
    """The section model of a field annotated ``Section`` or ``Section | None``."""
    return next(
        (a for a in (annotation, *get_args(annotation)) if isinstance(a, type) and issubclass(a, BaseModel)), None
    )


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """Every section model a field may hold: through unions, ``Annotated`` and sequences (the
    members of ``cluster``, the forms of an ``extraction.engines`` entry)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for a in get_args(annotation) for m in _models_in(a)]


def _locate(model: type[BaseModel], loc: tuple[Any, ...], unknown_key: bool) -> tuple[list[str], list[str]]:
    """(the key's parts as written in the YAML, the valid keys beside it).

    pydantic puts the tag of a union member into the location (``cluster.local.workers``,
    ``extraction.engines.0.onnx.onnx.name``); users wrote ``cluster.workers``, so a part that
    is no key of the sections there is a tag: dropped, and picking the member it names.
    List indices stay (``engines.0``).
    """
    key: list[str] = []
    candidates = [model]
    for i, part in enumerate(loc):
        last = i == len(loc) - 1
        if isinstance(part, int):
            key.append(str(part))
            continue
        field = next((m.model_fields[part] for m in candidates if part in m.model_fields), None)
        if field is None and not (last and unknown_key):
            tagged = [m for m in candidates if "kind" in m.model_fields and m.model_fields["kind"].default == part]
            candidates = tagged or candidates
            continue
        key.append(str(part))
        if field is not None and not last:
            candidates = _models_in(field.annotation)
    return key, [name for m in candidates for name in m.model_fields]


def format_errors(err: ValidationError, source: str, model: type[BaseModel], *, prefix: tuple[str, ...] = ()) -> str:
    """pydantic's errors of ``model`` as one SpecError message, a line per problem."""
    lines = []
    for e in err.errors():
        key, valid = _locate(model, tuple(e["loc"]), e["type"] == "extra_forbidden")
        where = ".".join((*prefix, *key))
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            lines.append(f"unknown key {where!r}; {did_you_mean(key[-1], valid, listing='valid keys')}")
        elif e["type"] == "missing":
            lines.append(f"key {where!r} is required")
        elif e["type"] == "value_error" and isinstance(e.get("input"), dict):
            lines.append(f"{where or 'the job'}: {msg}")  # a rule across the keys of a section
        else:
            lines.append(f"key {where!r}: {msg} (got {e.get('input')!r})")
    return f"invalid job spec {source}:\n" + "\n".join(f"  - {line}" for line in lines)
