"""The feature store: Parquet features and failures, a Zarr matrix, run records.

Layout under the store root (a local folder or an fsspec URL)::

    features/part-<run>-<seq>.parquet   one row per (case, label) extraction, written as results arrive
    failures/part-<run>-<seq>.parquet   case_id, label, stage, error_type, message, file, run_id, failed_at
    matrix.zarr/                        X (float64, rows x features, chunked by rows), case_id, label,
                                        feature_names; rebuilt from features/ at the end of each run
    runs/<run-id>.json                  parameters, versions, counts, timings, cluster

Part files are written to a temporary name and renamed, so a reader (or a re-run after a
crash) never sees a partial file. Rows are never rewritten: a newer extraction of the same
(case, label) supersedes the older one when the store is read (:meth:`Store.features`), so
nothing already written is lost and nothing appears twice.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from . import _io
from .errors import StoreError

__all__ = ["Store", "open_store", "ID_COLUMNS", "PROVENANCE_COLUMNS"]

ID_COLUMNS = ("case_id", "label")
PROVENANCE_COLUMNS = (
    "label_name",
    "patient_id",
    "image_hash",
    "mask_hash",
    "params_hash",
    "scan_seconds",
    "radcluster_version",
    "pyradiomics_version",
    "simpleitk_version",
    "run_id",
    "extracted_at",
)
_META_KEY = b"radcluster"
_MATRIX_CHUNK_ROWS = 4096


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="microseconds")


@dataclass
class Store:
    """A feature store at ``url``; see the module docstring for the layout.

    Obtain one with :func:`open_store`.
    """

    url: str

    def __post_init__(self) -> None:
        self.fs, self.root = fsspec.core.url_to_fs(self.url)
        self.root = self.root.rstrip("/")

    # -- paths -------------------------------------------------------------------------
    def _path(self, *parts: str) -> str:
        return "/".join((self.root, *parts))

    def _parts(self, table: str) -> list[str]:
        folder = self._path(table)
        if not self.fs.exists(folder):
            return []
        return sorted(
            p
            for p in self.fs.ls(folder, detail=False)
            if p.rsplit("/", 1)[-1].startswith("part-") and p.endswith(".parquet")
        )

    # -- writing -----------------------------------------------------------------------
    def _write_atomic(self, path: str, data: bytes) -> None:
        # a reader sees no file or the whole one: see _io.write_atomic
        _io.write_atomic(self.fs.unstrip_protocol(path), data)

    def write_part(
        self,
        table: str,
        rows: Sequence[dict[str, Any]],
        *,
        run_id: str,
        seq: int,
        metadata: dict[str, Any] | None = None,
    ) -> str | None:
        """Write ``rows`` as one Parquet part of ``table`` (``features`` or ``failures``).

        The part's schema metadata records ``metadata`` (feature names, params hash,
        versions) so a part is self-describing.
        """
        if not rows:
            return None
        frame = pd.DataFrame.from_records(list(rows))
        table_ = pa.Table.from_pandas(frame, preserve_index=False)
        meta = dict(table_.schema.metadata or {})
        meta[_META_KEY] = json.dumps(metadata or {}).encode()
        table_ = table_.replace_schema_metadata(meta)
        buf = io.BytesIO()
        pq.write_table(table_, buf, compression="zstd")
        path = self._path(table, f"part-{run_id}-{seq:06d}.parquet")
        self._write_atomic(path, buf.getvalue())
        return path

    def write_run(self, run_id: str, record: dict[str, Any]) -> None:
        self._write_atomic(self._path("runs", f"{run_id}.json"), json.dumps(record, indent=2, default=str).encode())

    # -- reading -----------------------------------------------------------------------
    def _read(self, table: str, columns: Sequence[str] | None = None) -> pd.DataFrame:
        frames = []
        for path in self._parts(table):
            with self.fs.open(path, "rb") as f:
                try:
                    pf = pq.ParquetFile(f)
                    wanted = None if columns is None else [c for c in columns if c in pf.schema_arrow.names]
                    part = pf.read(columns=wanted)
                except (pa.ArrowInvalid, OSError) as err:
                    raise StoreError(f"store {self.url!r}: part {path!r} is not readable Parquet: {err}") from err
            frames.append(part.to_pandas())
        if not frames:
            return pd.DataFrame(columns=list(columns) if columns else [])
        return pd.concat(frames, ignore_index=True, sort=False)

    def _part_metadata(self) -> Iterator[dict[str, Any]]:
        """radcluster's metadata of each features part (schema only, no rows are read)."""
        for path in self._parts("features"):
            with self.fs.open(path, "rb") as f:
                yield json.loads((pq.read_schema(f).metadata or {}).get(_META_KEY, b"{}"))

    def feature_names(self, params_hashes: Sequence[str] | None = None) -> list[str]:
        """Feature columns in pyradiomics order (first seen first), of the parts written with
        ``params_hashes`` (default: every part)."""
        names: dict[str, None] = {}
        for meta in self._part_metadata():
            if params_hashes is None or meta.get("params_hash") in params_hashes:
                names.update(dict.fromkeys(meta.get("features", [])))
        return list(names)

    def ibsi_names(self) -> dict[str, str]:
        """pyradiomics feature name -> IBSI tag, as recorded in the parts' metadata."""
        names: dict[str, str] = {}
        for meta in self._part_metadata():
            names.update(meta.get("ibsi_names", {}))
        return names

    def features(self, columns: Sequence[str] | None = None, *, all_versions: bool = False) -> pd.DataFrame:
        """The current features: one row per (case_id, label), the newest extraction of each.

        ``columns`` reads only those columns (plus the row keys) from the Parquet parts;
        ``all_versions=True`` returns every row ever written, superseded ones included.
        """
        wanted = None if columns is None else list(dict.fromkeys([*ID_COLUMNS, "extracted_at", *columns]))
        frame = self._read("features", columns=wanted)
        if frame.empty or all_versions:
            return frame
        frame = frame.sort_values("extracted_at", kind="stable")
        frame = frame.drop_duplicates(list(ID_COLUMNS), keep="last")
        return frame.sort_values(list(ID_COLUMNS), kind="stable", ignore_index=True)

    def row_keys(self) -> pd.DataFrame:
        """Key columns of every stored row (cheap: reads only those columns)."""
        return self._read(
            "features",
            columns=(
                "case_id",
                "label",
                "image_hash",
                "mask_hash",
                "params_hash",
                "image_stat",
                "mask_stat",
                "extracted_at",
            ),
        )

    def failures(self) -> pd.DataFrame:
        """Failures not superseded by a later successful extraction of the same case."""
        fails = self._read("failures")
        if fails.empty:
            return fails
        done = self.row_keys()
        if not done.empty:
            # a failure of one label (a DICOM ROI without contours) stands beside the rows of
            # the scan's other labels: only a later row of that label supersedes it
            last_ok = done.groupby("case_id")["extracted_at"].max()
            later = fails["case_id"].map(last_ok)
            per_label = done.groupby(["case_id", "label"])["extracted_at"].max()
            labelled = fails["label"].notna()
            keys = list(zip(fails["case_id"], fails["label"].fillna(-1).astype(int), strict=True))
            later = later.where(~labelled, pd.Series([per_label.get(k) for k in keys], index=fails.index))
            fails = fails[later.isna() | (later < fails["failed_at"])]
        return fails.sort_values(["case_id", "failed_at"], kind="stable", ignore_index=True)

    def runs(self) -> list[dict[str, Any]]:
        folder = self._path("runs")
        if not self.fs.exists(folder):
            return []
        out = []
        for path in sorted(self.fs.ls(folder, detail=False)):
            if path.endswith(".json") and not path.rsplit("/", 1)[-1].startswith(".tmp-"):
                with self.fs.open(path, "rb") as f:
                    out.append(json.loads(f.read()))
        return sorted(out, key=lambda r: r.get("started_at", ""))

    # -- the matrix ---------------------------------------------------------------------
    def build_matrix(self) -> int:
        """(Re)write ``matrix.zarr`` from the current features; returns its row count.

        Rows follow :meth:`features` (sorted by case_id, label); columns are
        :meth:`feature_names`; a feature a row lacks (other params) is NaN.
        """
        import zarr

        current = self.features()
        # columns of the params that produced the current rows, not of superseded extractions
        names = self.feature_names(current["params_hash"].unique().tolist() if len(current) else [])
        path = self._path("matrix.zarr")
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)
        group = zarr.open_group(store=self._zarr_store(path), mode="w")
        n = len(current)
        x = group.create_array(
            "X",
            shape=(n, len(names)),
            dtype="float64",
            chunks=(min(max(n, 1), _MATRIX_CHUNK_ROWS), max(len(names), 1)),
            fill_value=np.nan,
        )
        for start in range(0, n, _MATRIX_CHUNK_ROWS):
            block = current.iloc[start : start + _MATRIX_CHUNK_ROWS].reindex(columns=names)
            x[start : start + len(block)] = block.to_numpy(dtype="float64", na_value=np.nan)
        case_ids = current["case_id"].astype(str).tolist() if n else []
        group.create_array("case_id", shape=(n,), dtype=str, chunks=(max(n, 1),))[:] = np.array(case_ids, dtype=str)
        group.create_array("label", shape=(n,), dtype="int64", chunks=(max(n, 1),))[:] = (
            current["label"].to_numpy(dtype="int64") if n else np.zeros(0, "int64")
        )
        group.attrs.update(
            {
                "feature_names": names,
                "rows": n,
                "params_hashes": sorted(current["params_hash"].dropna().unique().tolist()) if n else [],
                "built_at": _now(),
            }
        )
        return n

    def _zarr_store(self, path: str):
        from zarr.storage import FsspecStore, LocalStore

        if self.fs.protocol in ("file", ("file", "local")) or "file" in self.fs.protocol:
            return LocalStore(path)
        return FsspecStore.from_url(self.fs.unstrip_protocol(path))

    def matrix_attrs(self) -> dict[str, Any]:
        """The matrix's attributes (feature_names, rows, params_hashes, built_at); {} without one."""
        import zarr

        if not self.has_matrix():
            return {}
        return dict(zarr.open_group(store=self._zarr_store(self._path("matrix.zarr")), mode="r").attrs)

    def has_matrix(self) -> bool:
        return self.fs.exists(self._path("matrix.zarr", "zarr.json"))

    def matrix_rows(self) -> int:
        return int(self.matrix_attrs()["rows"])

    def matrix(self):
        """The feature matrix as a dask array, with its row ids and feature names.

        Returns
        -------
        X : dask.array.Array
            float64, (rows, features), chunked by rows as stored; nothing is loaded.
        rows : pandas.DataFrame
            ``case_id`` and ``label`` of each row.
        feature_names : list of str
        """
        import dask.array as da
        import zarr

        path = self._path("matrix.zarr")
        if not self.fs.exists(path):
            raise StoreError(f"store {self.url!r} has no matrix.zarr; run `radcluster extract` first")
        group = zarr.open_group(store=self._zarr_store(path), mode="r")
        x = da.from_zarr(group["X"])
        rows = pd.DataFrame({"case_id": group["case_id"][:], "label": group["label"][:]})
        return x, rows, list(group.attrs["feature_names"])

    def summary(self) -> dict[str, Any]:
        keys = self.row_keys()
        return {
            "store": self.url,
            "rows": int(len(keys.drop_duplicates(list(ID_COLUMNS)))) if not keys.empty else 0,
            "cases": int(keys["case_id"].nunique()) if not keys.empty else 0,
            "failed_cases": int(self.failures()["case_id"].nunique()) if len(self._parts("failures")) else 0,
            "runs": len(self.runs()),
        }


def open_store(url: str | os.PathLike, *, must_exist: bool = True) -> Store:
    """Open the feature store at ``url`` (a folder or an fsspec URL).

    Examples
    --------
    >>> store = open_store("store/")                      # doctest: +SKIP
    >>> store.features().filter(like="glcm").describe()   # doctest: +SKIP
    >>> X, rows, names = store.matrix()                   # doctest: +SKIP
    """
    store = Store(os.fspath(url))
    if must_exist and not store.fs.exists(store.root):
        raise StoreError(f"no feature store at {os.fspath(url)!r}")
    return store
