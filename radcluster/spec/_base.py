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


def section_models(annotation: Any) -> list[type[BaseModel]]:
    """The sections a field holds: one (``Section`` or ``Section | None``), or the members of
    a tagged union such as ``cluster``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for a in get_args(annotation) for m in section_models(a)]


def _locate(model: type[BaseModel], loc: tuple[Any, ...]) -> tuple[list[str], list[str]]:
    """(the key's parts as written in the YAML, the valid keys beside it).

    pydantic puts the tag of a union member into the location (``cluster.local.workers``);
    users wrote ``cluster.workers``, so the tag is dropped and picks the member's keys.
    """
    key: list[str] = []
    current: type[BaseModel] | None = model
    parts = list(loc)
    while parts:
        part = parts.pop(0)
        key.append(str(part))
        if not parts:
            break
        field = current.model_fields.get(str(part)) if current is not None else None
        members = section_models(field.annotation) if field is not None else []
        if len(members) > 1:
            tag = parts.pop(0)
            current = next(
                (m for m in members if "kind" in m.model_fields and m.model_fields["kind"].default == tag), None
            )
        else:
            current = members[0] if members else None
    return key, list(current.model_fields) if current is not None else []


def format_errors(err: ValidationError, source: str, model: type[BaseModel], *, prefix: tuple[str, ...] = ()) -> str:
    """pydantic's errors of ``model`` as one SpecError message, a line per problem."""
    lines = []
    for e in err.errors():
        key, valid = _locate(model, tuple(e["loc"]))
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
