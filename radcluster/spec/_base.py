"""What every section of a job spec shares: one base class and one error formatter.

Every problem of a job is a :class:`~radcluster.errors.SpecError` whose lines follow the one
template of :class:`~radcluster.errors.Problem`: the key as the user wrote it
(``cluster.workers``, ``train.preprocess.pca``), what is wrong, and the fix: the closest
valid key for an unknown one, what is accepted, or the value that was given. Validators of
the sections raise ``ValueError("what; fix")``; :func:`spec_error` adds the key.
"""

from __future__ import annotations

from typing import Any, get_args

from pydantic import BaseModel, ConfigDict, ValidationError

from ..errors import Problem, SpecError, did_you_mean


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


def _locate(model: type[BaseModel], loc: tuple[Any, ...], unknown_key: bool) -> tuple[list[str], list[type[BaseModel]]]:
    """(the key's parts as written in the YAML, the sections the last part is a key of).

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
        tagged = [m for m in candidates if "kind" in m.model_fields and m.model_fields["kind"].default == part]
        if len(candidates) > 1 and tagged and not last:  # a tag, even one spelled like a key (cluster kind address)
            candidates = tagged
            continue
        field = next((m.model_fields[part] for m in candidates if part in m.model_fields), None)
        if field is None and not (last and unknown_key):
            candidates = tagged or candidates
            continue
        key.append(str(part))
        if field is not None and not last:
            candidates = _models_in(field.annotation)
    return key, candidates


def _problem(e: dict[str, Any], model: type[BaseModel], prefix: tuple[str, ...]) -> Problem:
    """One of pydantic's errors in the template: the key as written, what is wrong, the fix."""
    key, sections = _locate(model, tuple(e["loc"]), e["type"] == "extra_forbidden")
    dotted = ".".join((*prefix, *key))
    where = f"key {dotted!r}" if dotted else "the job"
    if e["type"] == "extra_forbidden":
        valid = [name for m in sections for name in m.model_fields]
        return Problem(where, "unknown key", did_you_mean(key[-1], valid, listing="valid keys"))
    if e["type"] == "missing":
        field = next((m.model_fields[key[-1]] for m in sections if key and key[-1] in m.model_fields), None)
        return Problem(
            where, "missing", f"required: {field.description}" if field and field.description else "required"
        )
    cause = (e.get("ctx") or {}).get("error")
    if isinstance(cause, SpecError):  # a check the validator borrowed (an engine's name): its words, this key
        borrowed = cause.problems[0]
        return Problem(where, f"{borrowed.where} {borrowed.what}", borrowed.fix)
    # Our validators write "what; fix"; pydantic's own messages say what is accepted, and
    # the value given is the fix. A rule across a section's keys gives its fix itself.
    what, _, fix = e["msg"].removeprefix("Value error, ").partition("; ")
    return Problem(where, what, fix or f"got {e.get('input')!r}")


def spec_error(err: ValidationError, source: str, model: type[BaseModel], *, prefix: tuple[str, ...] = ()) -> SpecError:
    """pydantic's errors of ``model`` as one SpecError listing every problem of ``source``."""
    return SpecError.listing(source, [_problem(e, model, prefix) for e in err.errors()])
