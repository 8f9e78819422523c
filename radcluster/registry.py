"""The model registry: one immutable folder per training, in safe formats only.

Layout of a registry folder::

    <version>/                 e.g. 20260101T120000Z-xgboost-3fa2c1
        version.json           what, when, from which store, config hash, versions, metrics
                               summary, and the sha256 of every other file (written last)
        config.json            the training config (its hash is in version.json)
        features.json          input feature names in model order (and pivot labels)
        preprocess.npz/.json   fitted imputation, ComBat, filters, scaler and PCA as arrays
        model.json + model.ubj XGBoost's own format   | model.skops (skops, trusted-types list)
                                                      | kmeans.npz (cluster centres)
        metrics.json           cross-validation (pooled and per fold) and held-out test metrics
        predictions.parquet    out-of-fold and test predictions the metrics came from
        importance.json        importances of the model inputs and of the input features
        pca_scores.parquet     first two PCA scores of the training rows (for the report)
        cases.json             case ids trained on, held out for test, and left out
        report.html            derived from the files above (re-rendered by `radcluster report`;
                               not hashed)

A version is written into ``.tmp-<uuid>/`` in the registry and renamed into place when
complete, so a reader never sees half a version and a crash leaves only a hidden temp
folder. Nothing is unpickled on load: arrays come from ``.npz`` with ``allow_pickle=False``,
XGBoost models from UBJSON, scikit-learn models through skops with an explicit list of
trusted types, and every file is checked against its recorded hash first.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import RegistryError

__all__ = ["VersionWriter", "ModelVersion", "new_version", "open_version", "list_versions", "FORMAT"]

FORMAT = 1
_UNHASHED = {"version.json", "report.html"}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def _clean(value: Any) -> Any:
    """NaN/inf become null, so the JSON files are standard JSON."""
    if isinstance(value, float | np.floating):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return _clean(value.tolist())
    if isinstance(value, np.integer | np.bool_):
        return value.item()
    return value


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(_clean(data), indent=2, default=_json_default, allow_nan=False) + "\n")


@dataclass
class VersionWriter:
    """A version being written: files go into ``path`` (a temp folder), metadata into ``meta``."""

    path: Path
    name: str
    meta: dict[str, Any]

    def write_json(self, name: str, data: Any) -> Path:
        target = self.path / name
        write_json(target, data)
        return target


def _version_name(model: str) -> str:
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{model}-{uuid.uuid4().hex[:6]}"


@contextlib.contextmanager
def new_version(registry: str | os.PathLike, model: str) -> Iterator[VersionWriter]:
    """Write a new version: yields a :class:`VersionWriter` on a temp folder; on a clean exit,
    version.json (with every file's hash) is written and the folder renamed into place.

    Raises
    ------
    RegistryError
        If the registry is not a local folder or the version cannot be moved into place.
    """
    root = Path(os.fspath(registry))
    if "://" in str(registry):
        raise RegistryError(f"registry {str(registry)!r}: only local (or mounted) folders are supported")
    root.mkdir(parents=True, exist_ok=True)
    name = _version_name(model)
    tmp = root / f".tmp-{uuid.uuid4().hex}"
    tmp.mkdir()
    writer = VersionWriter(tmp, name, {"format": FORMAT, "version": name,
                                       "created_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")})
    try:
        yield writer
        files = sorted(p.name for p in tmp.iterdir() if p.is_file() and p.name not in _UNHASHED)
        writer.meta["files"] = {f: _sha256(tmp / f) for f in files}
        write_json(tmp / "version.json", writer.meta)
        final = root / name
        if final.exists():  # pragma: no cover - the name carries a random suffix
            raise RegistryError(f"model version {str(final)!r} already exists")
        os.rename(tmp, final)
        writer.path = final
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@dataclass
class ModelVersion:
    """A loaded version: its metadata, fitted preprocessing and model."""

    path: Path
    meta: dict[str, Any]
    config: dict[str, Any]
    features: dict[str, Any]
    preprocessor: Any
    model: Any

    @property
    def name(self) -> str:
        return self.meta["version"]

    @property
    def task(self) -> str:
        return self.meta["task"]


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    folder = Path(os.fspath(path))
    try:
        return json.loads((folder / "version.json").read_text())
    except FileNotFoundError:
        hint = "" if folder.exists() else " (no such folder)"
        raise RegistryError(f"{str(folder)!r} is not a model version: no version.json{hint}") from None
    except json.JSONDecodeError as err:
        raise RegistryError(f"{folder / 'version.json'}: not valid JSON ({err})") from None


def verify(path: str | os.PathLike, meta: dict[str, Any] | None = None) -> None:
    """Check every recorded file against its hash; :class:`RegistryError` names the first bad one."""
    folder = Path(os.fspath(path))
    meta = meta or read_meta(folder)
    for name, digest in meta.get("files", {}).items():
        target = folder / name
        if not target.exists():
            raise RegistryError(f"model version {folder.name!r} is incomplete: {name} is missing")
        if _sha256(target) != digest:
            raise RegistryError(f"model version {folder.name!r}: {name} was modified after training "
                                "(hash mismatch); versions are immutable, retrain instead")


def open_version(path: str | os.PathLike, *, trust: tuple[str, ...] = ()) -> ModelVersion:
    """Load a version folder after checking its file hashes; never unpickles.

    ``trust`` names extra types skops may rebuild for a scikit-learn model; pass it only for
    files you trust (the defaults cover the models radcluster writes).
    """
    from .learn import Preprocessor, load_model

    folder = Path(os.fspath(path))
    meta = read_meta(folder)
    if meta.get("format") != FORMAT:
        raise RegistryError(f"{folder}: registry format {meta.get('format')!r}, this radcluster reads {FORMAT}")
    verify(folder, meta)
    config = json.loads((folder / "config.json").read_text())
    features = json.loads((folder / "features.json").read_text())
    with np.load(folder / "preprocess.npz", allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    pre = Preprocessor.from_arrays(arrays, json.loads((folder / "preprocess.json").read_text()))
    model = load_model(folder, trust=trust)
    return ModelVersion(folder, meta, config, features, pre, model)


def list_versions(registry: str | os.PathLike) -> list[dict[str, Any]]:
    """Metadata of every complete version in ``registry``, oldest first (temp folders skipped)."""
    root = Path(os.fspath(registry))
    if not root.is_dir():
        raise RegistryError(f"no model registry at {str(root)!r}")
    out = []
    for child in sorted(root.iterdir()):
        if child.is_dir() and not child.name.startswith(".") and (child / "version.json").exists():
            meta = read_meta(child)
            meta["path"] = str(child)
            out.append(meta)
    return sorted(out, key=lambda m: (m.get("created_at", ""), m.get("version", "")))
