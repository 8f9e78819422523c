"""The whole exception tree of radcluster.

Every error radcluster raises derives from :class:`RadclusterError`, so a caller can catch
the package's errors in one clause. Messages name the thing that is wrong and where
(the key of a job spec, the case and file of a scan), and say what would be accepted.
"""

from __future__ import annotations

__all__ = [
    "RadclusterError",
    "SpecError",
    "ManifestError",
    "ScanError",
    "StoreError",
    "ClusterError",
    "ModelError",
    "RegistryError",
]


class RadclusterError(Exception):
    """Base class of every error raised by radcluster."""


class SpecError(RadclusterError, ValueError):
    """A job spec, a params file or a command-line option is invalid.

    Raised before any cluster resource is requested.
    """


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
