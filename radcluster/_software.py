"""Which software made a result: the one lookup of installed versions.

Each caller formats the same answer its own way: a store row's provenance columns
(:func:`radcluster.extract._radiomics.versions`), a model version's metadata
(:mod:`radcluster.jobs.train`) and the IBSI compliance report's sentence
(:mod:`radcluster.ibsi.report`).
"""

from __future__ import annotations

import contextlib
import platform
from importlib import metadata

__all__ = ["software_versions"]


def _pyradiomics() -> str:
    # Published under two distribution names: the value names the one installed (a store row
    # of the bhklab fork must say so).
    for dist in ("pyradiomics-bhklab", "pyradiomics"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            return f"{dist} {metadata.version(dist)}"
    # A source checkout without metadata; imported where radcluster undoes its logging set-up.
    from .extract._radiomics import radiomics

    return f"radiomics {radiomics.__version__}"


def _simpleitk() -> str:
    import SimpleITK

    return SimpleITK.Version_VersionString()


# Names whose version is not their module's ``__version__``.
_SPECIAL = {"python": platform.python_version, "pyradiomics": _pyradiomics, "SimpleITK": _simpleitk}


def software_versions(*names: str) -> dict[str, str]:
    """``{name: version}`` of radcluster and of each named package that is installed.

    A name is an import name (``'sklearn'``, ``'dask_ml'``), or ``'python'``, ``'pyradiomics'``
    (its value names the distribution: ``'pyradiomics-bhklab 3.1.4'``) or ``'SimpleITK'``.
    A package that is not installed is left out. Order: radcluster, then as asked.
    """
    from . import __version__

    out = {"radcluster": __version__}
    for name in names:
        with contextlib.suppress(ImportError, AttributeError):
            out[name] = _SPECIAL[name]() if name in _SPECIAL else __import__(name).__version__
    return out
