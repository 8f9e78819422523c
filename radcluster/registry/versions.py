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
        contributions.parquet  per-row contributions of the model inputs (xgboost, cox, coxnet; at most
                               5,000 development rows, a fixed sample), or
        permutation_importance.parquet  for the other models
        stability.parquet      ICC of every feature per source, scans counted, kept (with select.icc_min)
        report.html            derived from the files above (re-rendered by `radcluster report`;
        checklist.md           not hashed): the report and its reporting checklist as Markdown

A registry is a local folder or an fsspec URL (``s3://bucket/models``, ``gs://...``,
``file://...``); credentials and endpoints come from the environment. Readers list only
versions that have a ``version.json``, and a version is written so that one appears only when
complete: in a local folder it is written into ``.tmp-<uuid>/`` and renamed into place (a
crash leaves only a hidden temp folder); in a remote registry it is written into a local
temp folder and uploaded to ``<registry>/<version>/`` with ``version.json`` last (a crash
leaves objects under a prefix without one, which nothing lists). A remote version is opened
by downloading the files its ``version.json`` records into a local temp folder, which is
what is then checked and loaded.

Nothing is unpickled on load: arrays come from ``.npz`` with ``allow_pickle=False``, XGBoost
models from UBJSON, scikit-learn models through skops with an explicit list of trusted types,
and every file is checked against its recorded hash first.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import numpy as np

from .. import _io
from ..errors import RegistryError

__all__ = [
    "VersionWriter",
    "ModelVersion",
    "new_version",
    "open_version",
    "fetched",
    "read_meta",
    "verify",
    "list_versions",
    "FORMAT",
]

FORMAT = 1
_UNHASHED = {"version.json", "report.html", "checklist.md"}  # the last two: re-rendered


def _sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with fsspec.open(os.fspath(path), "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def storage_failures(url: str, doing: str) -> Iterator[None]:
    """Storage failures (network, credentials, permissions) as a RegistryError naming ``url``
    and the reason. An OSError that is an expected outcome (FileNotFoundError for an optional
    file, FileExistsError for a lock) must be caught inside the block."""
    try:
        yield
    except Exception as err:
        if not isinstance(err, _io.storage_errors()):
            raise
        raise RegistryError(f"registry storage {url!r}: cannot {doing}: {type(err).__name__}: {err}") from err


@dataclass
class VersionWriter:
    """A version being written: files go into the local folder ``path``, metadata into ``meta``.

    Once the version is complete, ``location`` is where it lives: its folder in a local
    registry (``path`` then names it too), its URL in a remote one.
    """

    path: Path
    name: str
    meta: dict[str, Any]
    location: Path | str | None = None

    def write_json(self, name: str, data: Any) -> Path:
        target = self.path / name
        _io.write_json(target, data)
        return target


def _version_name(model: str) -> str:
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{model}-{uuid.uuid4().hex[:6]}"


@contextlib.contextmanager
def new_version(registry: str | os.PathLike, model: str) -> Iterator[VersionWriter]:
    """Write a new version: yields a :class:`VersionWriter` on a local temp folder; on a clean
    exit, version.json (with every file's hash) is written and the version put in place:
    renamed into a local registry, uploaded (version.json last) to a remote one.

    Raises
    ------
    RegistryError
        If the version cannot be moved or uploaded into place (naming the registry and why).
    """
    url = os.fspath(registry)
    root = _io.local_path(url)
    name = _version_name(model)
    if root is not None:
        Path(root).mkdir(parents=True, exist_ok=True)
        staging = Path(root) / f".tmp-{uuid.uuid4().hex}"  # same file system: the rename is atomic
        staging.mkdir()
    else:
        staging = Path(tempfile.mkdtemp(prefix="radcluster-version-"))
    writer = VersionWriter(
        staging,
        name,
        {"format": FORMAT, "version": name, "created_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")},
    )
    try:
        yield writer
        files = sorted(p.name for p in staging.iterdir() if p.is_file() and p.name not in _UNHASHED)
        writer.meta["files"] = {f: _sha256(staging / f) for f in files}
        _io.write_json(staging / "version.json", writer.meta)
        if root is None:
            writer.location = _upload(staging, _io.join(url, name))
        else:
            final = Path(root) / name
            if final.exists():  # pragma: no cover - the name carries a random suffix
                raise RegistryError(f"model version {str(final)!r} already exists")
            os.rename(staging, final)
            writer.path = writer.location = final
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _upload(staging: Path, target: str) -> str:
    """Upload a complete version folder to ``target``, version.json last; returns ``target``.

    Readers list only prefixes holding a version.json, so until that last upload the version
    does not exist for them. A failed upload removes what it sent.
    """
    data = sorted(p.name for p in staging.iterdir() if p.is_file() and p.name != "version.json")
    try:
        with storage_failures(target, "upload the model version"):
            _io.put_files(staging, data, target)
            _io.put_files(staging, ["version.json"], target)
    except BaseException:
        with contextlib.suppress(Exception):
            fs, prefix = fsspec.core.url_to_fs(target)
            fs.rm(prefix, recursive=True)
        raise
    return target


@dataclass
class ModelVersion:
    """A loaded version: its metadata, fitted preprocessing and model; ``path`` is its folder,
    or its URL in a remote registry."""

    path: Path | str
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
    """The version.json of the version at ``path`` (a folder or a URL)."""
    url = os.fspath(path).rstrip("/") or "/"
    with storage_failures(url, "read version.json"):
        try:
            return json.loads(_io.read_bytes(_io.join(url, "version.json")))
        except FileNotFoundError:
            fs, p = fsspec.core.url_to_fs(url)
            hint = "" if fs.exists(p) else " (no such folder)"
            raise RegistryError(f"{url!r} is not a model version: no version.json{hint}") from None
        except json.JSONDecodeError as err:
            raise RegistryError(f"{_io.join(url, 'version.json')}: not valid JSON ({err})") from None


def _recorded_files(path: str, meta: dict[str, Any]) -> dict[str, str]:
    """version.json's file -> sha256 table, refusing names that would leave the version's folder."""
    files = meta.get("files", {})
    if not isinstance(files, dict):
        raise RegistryError(f"model version {_io.basename(path)!r}: version.json 'files' is not a table")
    bad = [n for n in files if n in ("", ".", "..") or "/" in n or "\\" in n]
    if bad:
        raise RegistryError(f"model version {_io.basename(path)!r}: version.json records unsafe file names {bad}")
    return files


def verify(path: str | os.PathLike, meta: dict[str, Any] | None = None) -> None:
    """Check every recorded file against its hash; :class:`RegistryError` names the first bad one."""
    url = os.fspath(path)
    meta = meta or read_meta(url)
    name = _io.basename(url)
    with storage_failures(url, "read the model version"):
        for file, digest in _recorded_files(url, meta).items():
            try:
                actual = _sha256(_io.join(url, file))
            except FileNotFoundError:
                raise RegistryError(f"model version {name!r} is incomplete: {file} is missing") from None
            if actual != digest:
                raise RegistryError(
                    f"model version {name!r}: {file} was modified after training "
                    "(hash mismatch); versions are immutable, retrain instead"
                )


@contextlib.contextmanager
def fetched(path: str | os.PathLike) -> Iterator[Path]:
    """A local folder holding the version at ``path``: the folder itself when local; for a URL,
    a temporary download of its version.json and the files it records (report.html is not
    among them), removed on exit. Nothing is verified here; see :func:`verify`.
    """
    url = os.fspath(path)
    local = _io.local_path(url)
    if local is not None:
        yield Path(local)
        return
    recorded = _recorded_files(url, read_meta(url))
    with tempfile.TemporaryDirectory(prefix="radcluster-version-") as tmp:
        with storage_failures(url, "download the model version"):
            fs, root = fsspec.core.url_to_fs(url)
            fs.invalidate_cache(root)
            present = {_io.basename(p) for p in fs.ls(root, detail=False)}
            # a recorded file that is missing stays missing here, and verify() names it
            _io.get_files(url, ["version.json", *(n for n in recorded if n in present)], tmp)
        yield Path(tmp)


def open_version(path: str | os.PathLike, *, trust: tuple[str, ...] = ()) -> ModelVersion:
    """Load a version (a folder, or a URL in a remote registry) after checking its file hashes;
    never unpickles.

    A remote version is downloaded to a temporary folder first, and that copy is what is
    checked and loaded. ``trust`` names extra types skops may rebuild for a scikit-learn
    model; pass it only for files you trust (the defaults cover the models radcluster writes).
    """
    from ..learn.models import load_model
    from ..learn.preprocess import Preprocessor

    url = os.fspath(path)
    with fetched(url) as folder:
        meta = read_meta(folder)
        if meta.get("format") != FORMAT:
            raise RegistryError(f"{url}: registry format {meta.get('format')!r}, this radcluster reads {FORMAT}")
        verify(folder, meta)
        config = json.loads((folder / "config.json").read_text())
        features = json.loads((folder / "features.json").read_text())
        with np.load(folder / "preprocess.npz", allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        pre = Preprocessor.from_arrays(arrays, json.loads((folder / "preprocess.json").read_text()))
        model = load_model(folder, trust=trust)
    return ModelVersion(folder if _io.local_path(url) is not None else url, meta, config, features, pre, model)


def list_versions(registry: str | os.PathLike) -> list[dict[str, Any]]:
    """Metadata of every complete version in ``registry`` (a folder or a URL), oldest first;
    folders without a version.json (temp folders, interrupted uploads) are skipped.
    """
    url = os.fspath(registry)
    with storage_failures(url, "list the registry"):
        fs, root = fsspec.core.url_to_fs(url)
        fs.invalidate_cache(root)  # another process may have added a version since
        if not fs.isdir(root):
            raise RegistryError(f"no model registry at {url!r}")
        names = sorted(_io.basename(e["name"]) for e in fs.ls(root, detail=True) if e["type"] == "directory")
        names = [n for n in names if not n.startswith(".")]
        paths = [f"{root.rstrip('/')}/{n}/version.json" for n in names]
        found = fs.cat(paths, on_error="omit") if paths else {}
    out = []
    for n, path in zip(names, paths, strict=True):
        raw = found.get(path)
        if raw is None:
            continue
        try:
            meta = json.loads(raw)
        except json.JSONDecodeError as err:
            raise RegistryError(f"{_io.join(url, n)}/version.json: not valid JSON ({err})") from None
        meta["path"] = _io.join(url, n)
        out.append(meta)
    return sorted(out, key=lambda m: (m.get("created_at", ""), m.get("version", "")))
