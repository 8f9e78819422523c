"""The whole exception tree of radcluster, and the one record of a failed scan.

Every error radcluster raises derives from :class:`RadclusterError`, so a caller can catch
the package's errors in one clause. Messages name the thing that is wrong and where
(the key of a job spec, the case and file of a scan), and say what would be accepted.

A scan that cannot be extracted becomes a :class:`FailureRecord` (never a row of NaNs),
whichever way it failed: a :class:`ScanError` inside the task, a task that died, or a scan
too large for any worker. Its fields are the columns of the store's ``failures/`` table.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, astuple, dataclass
from typing import Any

__all__ = [
    "RadclusterError",
    "SpecError",
    "Problem",
    "ManifestError",
    "ScanError",
    "StoreError",
    "ClusterError",
    "ModelError",
    "RegistryError",
    "FailureRecord",
    "FAILURE_COLUMNS",
    "did_you_mean",
]


def did_you_mean(word: object, choices: Iterable[str], *, listing: str = "valid") -> str:
    """The fix of an unknown name, for every "unknown ..." message: the closest of ``choices``
    (``did you mean 'x'?``), or all of them when none is close (``valid: a, b``)."""
    import difflib

    choices = list(choices)
    close = difflib.get_close_matches(str(word), choices, n=1)
    return f"did you mean {close[0]!r}?" if close else f"{listing}: {', '.join(choices)}"


class RadclusterError(Exception):
    """Base class of every error raised by radcluster."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a job, a params file or an argument, in the template every
    :class:`SpecError` follows: ``where: what; fix``.

    ``where`` is the key as the user wrote it (``key 'cluster.workers'``) or the file,
    argument or name at fault (``params file 'p.yaml'``, ``make_cohort argument 'signal'``);
    ``what`` says what is wrong; ``fix`` gives the closest valid name (``did you mean 'x'?``),
    what is accepted, or the value that was given (``got 'x'``).
    """

    where: str
    what: str
    fix: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}; {self.fix}"


class SpecError(RadclusterError, ValueError):
    """A job spec, a params file or a command-line option is invalid.

    Raised before any cluster resource is requested. Built from one :class:`Problem`
    (``SpecError(where, what, fix)``), or from every problem found in one file at once
    (:meth:`listing`), so that every message reads the same way.
    """

    def __init__(self, where: str, what: str, fix: str):
        super().__init__(where, what, fix)
        self.source: str | None = None
        self.problems: tuple[Problem, ...] = (Problem(where, what, fix),)

    @classmethod
    def listing(cls, source: str, problems: Sequence[Problem]) -> SpecError:
        """Every problem found in ``source`` (a job spec, a params file), a line each, so a
        user fixes them all at once instead of one per run."""
        err = cls(*astuple(problems[0]))
        err.source, err.problems = source, tuple(problems)
        return err

    def __str__(self) -> str:
        if self.source is None:
            return str(self.problems[0])
        lines = "\n".join(f"  - {p}" for p in self.problems)
        return f"{self.source} has {len(self.problems)} problem(s):\n{lines}"


class ManifestError(RadclusterError, ValueError):
    """The cohort manifest is unusable as a whole (missing columns, duplicate ids, ...).

    ``problems`` lists every problem found, one human-readable line each, so a user can
    fix them all at once instead of one per run.
    """

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"manifest {source!r} has {len(self.problems)} problem(s):\n{lines}")


class ScanError(RadclusterError):
    """One scan (or one label of it) could not be extracted.

    Carries what a failure record needs: the case, the file at fault, the pipeline stage and
    the reason. The extraction task turns it into a row of the ``failures/`` table; it never
    becomes a NaN feature.
    """

    def __init__(self, case_id: str, stage: str, reason: str, *, file: str | None = None, label: int | None = None):
        self.case_id = case_id
        self.stage = stage
        self.reason = reason
        self.file = file
        self.label = label
        where = f" label {label}" if label is not None else ""
        at = f" ({file})" if file else ""
        super().__init__(f"case {case_id!r}{where}: {stage} failed{at}: {reason}")

    @classmethod
    def wrap(
        cls, case_id: str, err: BaseException, *, stage: str = "extract", file: str | None = None, label=None
    ) -> ScanError:
        """``err`` (raised by pyradiomics, SimpleITK, ...) as this scan's error, kept as its cause."""
        wrapped = cls(case_id, stage, str(err).strip() or type(err).__name__, file=file, label=label)
        wrapped.__cause__ = err
        return wrapped


class StoreError(RadclusterError):
    """The feature store is missing, corrupt, or was written with incompatible settings."""


class ClusterError(RadclusterError):
    """A Dask cluster could not be created or reached."""


class ModelError(RadclusterError):
    """Training or prediction cannot proceed (no target, missing features, bad config)."""


class RegistryError(RadclusterError):
    """A model version is missing, incomplete, or unsafe to load."""


@dataclass(frozen=True)
class FailureRecord:
    """Why one scan, or one label of it, has no feature row: a row of the ``failures/`` table."""

    case_id: str
    label: int | None
    stage: str  # read, check, extract (inside the task); task, worker (the task died); plan
    error_type: str
    message: str
    file: str | None

    @classmethod
    def from_scan_error(cls, err: ScanError) -> FailureRecord:
        """A problem of the scan found inside the extraction task; ``error_type`` is the library's."""
        cause = err.__cause__
        return cls(
            err.case_id,
            err.label,
            err.stage,
            type(cause).__name__ if cause is not None else "ScanError",
            str(err),
            err.file,
        )

    @classmethod
    def from_task_error(cls, case_id: str, file: str, err: BaseException) -> FailureRecord:
        """A task that raised instead of returning its result: the worker died on it
        repeatedly (``KilledWorker``) or radcluster itself has a bug; either way it is recorded."""
        stage = "worker" if type(err).__name__ == "KilledWorker" else "task"
        return cls(case_id, None, stage, type(err).__name__, f"case {case_id!r}: {stage} failed ({file}): {err}", file)

    @classmethod
    def too_large(cls, case_id: str, file: str, need: int, largest_worker: int) -> FailureRecord:
        """A scan the plan keeps off the cluster: it would not fit in the largest worker's memory."""
        message = (
            f"case {case_id!r}: plan failed ({file}): needs about {need / 2**30:.1f} GiB to extract, the largest "
            f"worker has {largest_worker / 2**30:.1f} GiB; use workers with more memory (--memory-limit, or fewer "
            "threads per worker)"
        )
        return cls(case_id, None, "plan", "ScanTooLarge", message, file)

    def row(self, **extra: Any) -> dict[str, Any]:
        """The store row: :data:`FAILURE_COLUMNS` in order, then ``extra`` (run id, time)."""
        return {**asdict(self), **extra}


FAILURE_COLUMNS = tuple(FailureRecord.__dataclass_fields__)
