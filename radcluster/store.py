"""The feature store: Parquet features and failures, an appended Zarr matrix, run records.

Layout under the store root (a local folder or an fsspec URL)::

    store.json                          the params the store holds (hash and text): one set per store
    features/part-<run>-<seq>.parquet   rows of (case, label) extractions, written as results arrive
    features/compact-<gen>-<id>-<n>.parquet   parts merged by compaction, live once generation <gen> names them
    features/_generation-<gen>.json     which compacted files are live and which parts they replaced
    failures/...                        the same, for case_id, label, stage, error_type, message, file
    matrix.zarr/                        X (float64, rows x features), case_id, label, extracted_at: every
                                        row of the store's params in the order it was appended
    runs/<run-id>.json                  parameters, versions, counts, timings, cluster
    stability.parquet                   ICC per feature over perturbed copies / retests (extraction.perturb)

**Current rows.** A store holds the features of one params file (``store.json``; a run with
other params is refused, naming both, so one matrix never mixes two settings). The current
rows of a case are the rows of its latest successful extraction: one row per (case_id, label)
it produced. A newer extraction supersedes every older row of the case, so a label that is no
longer in the mask is retired with it; an image changed and then changed back is extracted
again and its newest rows are current. Rows are never rewritten: older ones stay readable
(``all_versions=True``) and are told apart by ``extracted_at``, which every row of one
extraction shares. The matrix is appended, never rebuilt; which of its rows are current is
derived when it is opened from its key arrays, so an append is complete or absent.

**Atomicity.** A part is written to a temporary name and renamed (one PUT on an object store),
so a reader never sees a partial file. Compaction writes merged files first and then commits
them in one exclusive create of the next ``_generation-<gen>.json``, which also names the parts
they replace; a reader takes the newest generation, and if a newer one appears while it reads
(or a replaced part vanishes under it) it reads again, so it sees every row exactly once.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import os
import re
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from . import _io
from .errors import FAILURE_COLUMNS, StoreError

__all__ = ["Store", "open_store", "latest_extractions", "ID_COLUMNS", "PROVENANCE_COLUMNS", "TABLES"]

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
TABLES = ("features", "failures")
_META_KEY = b"radcluster"
_KEYS = ("case_id", "label", "extracted_at")  # what identifies a stored row (and a matrix row)
# Matrix chunks: 512 rows (5 MB at 1,200 features), so an append of a few hundred rows rewrites
# at most two chunks; dask reads them in blocks of about 64 MB.
_MATRIX_CHUNK_ROWS = 512
_DASK_CHUNK_BYTES = 64 << 20
_KEY_CHUNK_ROWS = 1 << 16
# Part schemas read at once (each a footer of ~4 MB parsed for 1,200 columns, then dropped).
_SCHEMA_READS = 8
# Compaction merges parts below half this size into files of about this size: 16 files per
# 100k rows of 1,200 features, each small enough to rewrite in the driver's memory.
COMPACT_BYTES = 64 << 20
# The ICC table of the perturbed copies (and retests) of the store's scans, rewritten by each
# run of a job with extraction.perturb.
STABILITY_FILE = "stability.parquet"
_GENERATION = re.compile(r"^_generation-(\d{6})\.json$")
_COMPACT = re.compile(r"^compact-(\d{6})-")
_READ_ATTEMPTS = 20
# Rows of a row group in a merged part: about 20 MB at 1,200 features, what compaction holds.
_ROW_GROUP_ROWS = 2048


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="microseconds")


@dataclass
class _Snapshot:
    """The live part files of a table at one generation, with their sizes."""

    generation: int
    parts: dict[str, int]  # path -> bytes
    state: dict[str, Any] = field(default_factory=dict)
    orphans: list[str] = field(default_factory=list)  # files no generation names (a killed compaction)
    folder: str = ""


class _Stale(Exception):
    """A compaction committed while a snapshot was read: read again."""


def _arrow_table(rows: Sequence[dict[str, Any]], metadata: dict[str, Any] | None) -> pa.Table:
    frame = pd.DataFrame.from_records(list(rows))
    table = pa.Table.from_pandas(frame, preserve_index=False)
    return _with_metadata(table, metadata)


def _with_metadata(table: pa.Table, metadata: dict[str, Any] | None) -> pa.Table:
    meta = dict(table.schema.metadata or {})
    meta[_META_KEY] = json.dumps(metadata or {}).encode()
    return table.replace_schema_metadata(meta)


def _parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    # Dictionary encoding and statistics only for text columns: feature values are distinct
    # doubles, where trying a dictionary per column doubles the writing time for nothing.
    text = [f.name for f in table.schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
    pq.write_table(
        table,
        buf,
        compression="zstd",
        use_dictionary=text or False,
        write_statistics=[*text, "label"] if "label" in table.column_names else text or False,
    )
    return buf.getvalue()


def _to_expression(filters):
    """pyarrow Expression from an Expression or pandas/pyarrow's list-of-tuples form."""
    if filters is None or isinstance(filters, ds.Expression):
        return filters
    return pq.filters_to_expression(filters)


@dataclass
class Store:
    """A feature store at ``url``; see the module docstring for the layout and the rules.

    Obtain one with :func:`open_store`.
    """

    url: str

    def __post_init__(self) -> None:
        self._schemas: dict[str, pa.Schema] = {}
        self.fs, self.root = fsspec.core.url_to_fs(self.url)
        self.root = self.root.rstrip("/")
        self._local = "file" in ((self.fs.protocol,) if isinstance(self.fs.protocol, str) else self.fs.protocol)

    # -- paths -------------------------------------------------------------------------
    def _path(self, *parts: str) -> str:
        return "/".join((self.root, *parts))

    def _write_atomic(self, path: str, data: bytes) -> None:
        # a reader sees no file or the whole one: see _io.write_atomic
        _io.write_atomic(self.fs.unstrip_protocol(path), data)

    def _arrow_fs(self):
        import pyarrow.fs as pafs

        if self._local:
            return pafs.LocalFileSystem()
        return pafs.PyFileSystem(pafs.FSSpecHandler(self.fs))

    # -- the params of the store --------------------------------------------------------
    def params(self) -> dict[str, Any]:
        """``store.json``: the params hash (and text) every row of the store was extracted with.

        A store written before ``store.json`` existed takes the params of its newest row.
        """
        try:
            return json.loads(self.fs.cat_file(self._path("store.json")))
        except FileNotFoundError:
            keys = self._keys(("params_hash",))
            if keys.empty:
                return {}
            return {"params_hash": str(keys.sort_values("extracted_at")["params_hash"].iloc[-1])}

    def check_params(self, params_hash: str) -> None:
        """Refuse ``params_hash`` if the store holds features of other params.

        Raises
        ------
        StoreError
            Naming both params hashes and what to do instead.
        """
        held = self.params().get("params_hash")
        if held is not None and held != params_hash:
            raise StoreError(
                f"store {self.url!r} holds features extracted with params {held} (see its store.json); "
                f"these params are {params_hash}. A store holds one params set, so its matrix never mixes "
                "features of two settings: extract into another store (--out), or use the store's params file"
            )

    def claim_params(self, params_hash: str, params_text: str = "") -> None:
        """Make ``params_hash`` the store's params (``store.json``), or refuse as
        :meth:`check_params` does."""
        self.check_params(params_hash)
        if self.fs.exists(self._path("store.json")):
            return
        record = {"params_hash": params_hash, "params": params_text, "created_at": _now()}
        self.fs.makedirs(self.root, exist_ok=True)
        try:
            _io.create_exclusive(
                self.fs.unstrip_protocol(self._path("store.json")), json.dumps(record, indent=2).encode()
            )
        except FileExistsError:  # another run claimed it first: its params are the store's
            self.check_params(params_hash)

    # -- listing: which part files are live ----------------------------------------------
    def _snapshot(self, table: str) -> _Snapshot:
        folder = self._path(table)
        self.fs.invalidate_cache(folder)
        try:
            entries = self.fs.ls(folder, detail=True)
        except FileNotFoundError:
            return _Snapshot(0, {}, folder=folder)
        files = {e["name"].rsplit("/", 1)[-1]: int(e.get("size") or 0) for e in entries if e.get("type") != "directory"}
        gens = sorted(int(m.group(1)) for n in files if (m := _GENERATION.match(n)))
        generation = gens[-1] if gens else 0
        state: dict[str, Any] = {"compacted": [], "retired": []}
        if generation:
            try:
                state = json.loads(self.fs.cat_file(f"{folder}/_generation-{generation:06d}.json"))
            except (FileNotFoundError, json.JSONDecodeError) as err:
                raise _Stale() from err
        # A generation committed after the listing may have removed parts the listing lacks.
        if self.fs.exists(f"{folder}/_generation-{generation + 1:06d}.json"):
            raise _Stale()
        retired, compacted = set(state["retired"]), set(state["compacted"])
        parts, orphans = {}, []
        for name, size in sorted(files.items()):
            if not name.endswith(".parquet"):
                continue
            if name.startswith("part-") and name not in retired:
                parts[f"{folder}/{name}"] = size
            elif name.startswith("compact-") and name in compacted:
                parts[f"{folder}/{name}"] = size
            elif name.startswith("compact-") and (m := _COMPACT.match(name)) and int(m.group(1)) <= generation:
                orphans.append(f"{folder}/{name}")
        missing = compacted - {p.rsplit("/", 1)[-1] for p in parts}
        if missing:
            raise StoreError(
                f"store {self.url!r}: generation {generation} of {table}/ names "
                f"{sorted(missing)[:3]}, which do not exist"
            )
        return _Snapshot(generation, parts, state, orphans, folder)

    def _read_consistent(self, table: str, read):
        """``read(snapshot)``, again from a new snapshot if a compaction changed it meanwhile."""
        for _ in range(_READ_ATTEMPTS):
            try:
                snap = self._snapshot(table)
                result = read(snap)
                if self.fs.exists(self._path(table, f"_generation-{snap.generation + 1:06d}.json")):
                    continue  # committed while we read: parts we read may be gone or doubled
                return result
            except (_Stale, FileNotFoundError):
                time.sleep(0.05)
        raise StoreError(
            f"store {self.url!r}: {table}/ kept changing under the reader "
            f"({_READ_ATTEMPTS} attempts); is a compaction looping?"
        )

    def _dataset(self, paths: Sequence[str]) -> ds.Dataset | None:
        """The parts as one pyarrow dataset under one schema: parts of different runs may
        differ in columns (carried columns, an all-empty column typed null), and a column a
        part lacks reads as nulls."""
        if not paths:
            return None
        fs = self._arrow_fs()
        try:
            # A part never changes once written: its schema (a footer read, slow for 1,200
            # columns) is read once per Store, on its own, a few parts at a time (on an object
            # store each is a round trip or two). A dataset's fragments keep each part's
            # whole footer once read (~4 MB in memory for 1,200 columns, against 30 kB for
            # the schema): read through one dataset, 391 parts held 1.7 GB at once.
            unread = [p for p in paths if p not in self._schemas]
            if unread:
                with ThreadPoolExecutor(min(_SCHEMA_READS, len(unread))) as pool:
                    schemas = pool.map(lambda p: pq.read_schema(p, filesystem=fs), unread)
                    self._schemas.update(zip(unread, schemas, strict=True))
            distinct: list[pa.Schema] = []  # parts of one run share theirs: unify each kind once
            for p in paths:
                if not any(self._schemas[p] is d or self._schemas[p].equals(d) for d in distinct):
                    distinct.append(self._schemas[p])
            schema = pa.unify_schemas(distinct, promote_options="permissive")
            return ds.dataset(list(paths), format="parquet", filesystem=fs, schema=schema)
        except (pa.ArrowInvalid, OSError) as err:
            raise _read_error(self.url, err) from err

    def _read(self, table: str, columns: Sequence[str] | None = None, filters=None) -> pd.DataFrame:
        expr = _to_expression(filters)

        def read(snap: _Snapshot) -> pd.DataFrame:
            data = self._dataset(list(snap.parts))
            if data is None:
                return pd.DataFrame(columns=list(columns) if columns else [])
            wanted = None if columns is None else [c for c in columns if c in data.schema.names]
            try:
                return data.to_table(columns=wanted, filter=expr).to_pandas()
            except (pa.ArrowInvalid, OSError) as err:
                raise _read_error(self.url, err) from err

        return self._read_consistent(table, read)

    # -- writing -----------------------------------------------------------------------
    def write_part(
        self,
        table: str,
        rows: Sequence[dict[str, Any]] | pa.Table,
        *,
        run_id: str,
        seq: int,
        metadata: dict[str, Any] | None = None,
    ) -> int:
        """Write ``rows`` (dicts or an Arrow table) as one Parquet part of ``table``.

        The part's schema metadata records ``metadata`` (feature names, params hash,
        versions) so a part is self-describing. Returns its size in bytes (0: no rows, no part).
        """
        if not len(rows):
            return 0
        data = _with_metadata(rows, metadata) if isinstance(rows, pa.Table) else _arrow_table(rows, metadata)
        path = self._path(table, f"part-{run_id}-{seq:06d}.parquet")
        payload = _parquet_bytes(data)
        self._write_atomic(path, payload)
        return len(payload)

    def write_run(self, run_id: str, record: dict[str, Any]) -> None:
        self._write_atomic(self._path("runs", f"{run_id}.json"), _io.json_bytes(record))

    # -- reading -----------------------------------------------------------------------
    def _part_metadata(self) -> Iterator[dict[str, Any]]:
        """radcluster's metadata of each features part (schema only, no rows are read)."""
        for path in self._read_consistent("features", lambda snap: list(snap.parts)):
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

    def _keys(self, extra: Sequence[str] = ()) -> pd.DataFrame:
        return self._read("features", columns=list(dict.fromkeys([*_KEYS, "params_hash", *extra])))

    def _latest(self, keys: pd.DataFrame | None = None) -> pd.DataFrame:
        """case_id -> extracted_at of each case's current extraction (see the module docstring)."""
        keys = self._keys() if keys is None else keys
        if keys.empty:
            return pd.DataFrame({"case_id": pd.Series(dtype=str), "extracted_at": pd.Series(dtype=str)})
        held = self.params().get("params_hash")
        if held is not None and "params_hash" in keys:
            keys = keys[keys["params_hash"] == held]
        return latest_extractions(keys)

    def features(
        self, columns: Sequence[str] | None = None, *, filters=None, all_versions: bool = False, as_dask: bool = False
    ):
        """The current features: one row per (case_id, label) of each case's latest extraction.

        Parameters
        ----------
        columns : list of str, optional
            Read only these columns (plus the row keys) from the parts: columns not asked for
            are never read.
        filters : pyarrow Expression or list of (column, op, value) tuples, optional
            Rows to keep (``[("label", "==", 1)]``, ``pyarrow.compute.field("site") == "A"``),
            applied while reading, part by part; which rows are current is decided over all
            rows first, so a filter never brings back a superseded row.
        all_versions : bool
            Every row ever written, superseded ones included.
        as_dask : bool
            A dask dataframe, one partition per part file, read lazily.
        """
        wanted = None if columns is None else list(dict.fromkeys([*_KEYS, *columns]))
        latest = None if all_versions else self._latest()
        if as_dask:
            return self._features_dask(wanted, _to_expression(filters), latest)
        frame = self._read("features", columns=wanted, filters=filters)
        if frame.empty:
            return frame
        if latest is not None:
            frame = frame.merge(latest, on=["case_id", "extracted_at"], how="inner", sort=False)
        return frame.sort_values(list(ID_COLUMNS), kind="stable", ignore_index=True)

    def _features_dask(self, columns, expr, latest: pd.DataFrame | None):
        import dask.dataframe as dd

        snap = self._read_consistent("features", lambda s: s)
        data = self._dataset(list(snap.parts))
        if data is None:
            raise StoreError(f"store {self.url!r} has no features")
        schema = (
            data.schema
            if columns is None
            else pa.schema([data.schema.field(c) for c in columns if c in data.schema.names])
        )
        meta = schema.empty_table().to_pandas()
        return dd.from_map(
            _read_part,
            list(snap.parts),
            schema=schema,
            filesystem=self._arrow_fs(),
            expr=expr,
            latest=latest,
            meta=meta,
            enforce_metadata=False,
        )

    def row_keys(self) -> pd.DataFrame:
        """Key columns of every stored row (cheap: reads only those columns)."""
        return self._keys(("image_hash", "mask_hash", "image_stat", "mask_stat"))

    def current_keys(self) -> pd.DataFrame:
        """:meth:`row_keys` of the current rows only."""
        keys = self.row_keys()
        if keys.empty:
            return keys
        return keys.merge(self._latest(keys), on=["case_id", "extracted_at"], how="inner")

    def failures(self) -> pd.DataFrame:
        """Failures not superseded by a later successful extraction of the same case
        (:data:`~radcluster.errors.FAILURE_COLUMNS`, ``run_id`` and ``failed_at``; no rows when none)."""
        fails = self._read("failures", columns=(*FAILURE_COLUMNS, "run_id", "failed_at"))
        if fails.empty:
            return fails
        done = self._latest()
        if not done.empty:
            later = fails["case_id"].map(done.set_index("case_id")["extracted_at"])
            labelled = fails["label"].notna()
            if labelled.any():
                # a failure of one label (a DICOM ROI without contours) stands beside the rows
                # of the scan's other labels: only a row of that label supersedes it
                keys = self._keys()
                current = keys.merge(done, on=["case_id", "extracted_at"], how="inner")
                have = set(zip(current["case_id"], current["label"].astype(int), strict=True))
                pairs = zip(fails["case_id"], fails["label"], strict=True)
                has_row = [not pd.notna(label) or (case, int(label)) in have for case, label in pairs]
                later = later.where(pd.Series(has_row, index=fails.index))
            fails = fails[later.isna() | (later < fails["failed_at"])]
        return fails.sort_values(["case_id", "failed_at"], kind="stable", ignore_index=True)

    def runs(self) -> list[dict[str, Any]]:
        folder = self._path("runs")
        if not self.fs.exists(folder):
            return []
        paths = [
            p
            for p in sorted(self.fs.ls(folder, detail=False))
            if p.endswith(".json") and not p.rsplit("/", 1)[-1].startswith(".")
        ]
        out = [json.loads(data) for data in self.fs.cat(paths).values()] if paths else []
        return sorted(out, key=lambda r: r.get("started_at", ""))

    # -- stability (extraction.perturb) ---------------------------------------------------
    def write_stability(self, table: pd.DataFrame) -> None:
        """Replace ``stability.parquet``: the ICC of every feature over the store's perturbed
        copies and retests (:func:`radcluster.learn.stability.store_stability`)."""
        self._write_atomic(
            self._path(STABILITY_FILE), _parquet_bytes(pa.Table.from_pandas(table, preserve_index=False))
        )

    def stability(self) -> pd.DataFrame | None:
        """``stability.parquet`` (``feature, source, icc, n, k``), or None when no run wrote one."""
        try:
            with self.fs.open(self._path(STABILITY_FILE), "rb") as f:
                return pd.read_parquet(f)
        except FileNotFoundError:
            return None

    # -- compaction ---------------------------------------------------------------------
    def parts(self, table: str = "features") -> dict[str, int]:
        """The live part files of ``table`` and their sizes in bytes."""
        return self._read_consistent(table, lambda snap: dict(snap.parts))

    def compact(self, *, target_bytes: int = COMPACT_BYTES, min_parts: int = 2) -> dict[str, tuple[int, int]]:
        """Merge the small parts of each table into files of about ``target_bytes``.

        Nothing happens to a table with fewer than ``min_parts`` small parts. Rows are copied
        unchanged (superseded ones too). The merged files become live, and the parts they
        replace retired, in one exclusive create of the next generation file; a compaction
        killed before it leaves only unnamed files (removed by the next one), one killed after
        it leaves replaced parts that no reader uses (also removed by the next). Of two
        concurrent compactions one commits, the other removes what it wrote.

        Returns ``{table: (parts before, parts after)}``.
        """
        out = {}
        for table in TABLES:
            out[table] = self._compact_table(table, target_bytes, min_parts)
        return out

    def _compact_table(self, table: str, target_bytes: int, min_parts: int) -> tuple[int, int]:
        snap = self._read_consistent(table, lambda s: s)
        self._remove_garbage(snap)
        small = [p for p, size in snap.parts.items() if size < target_bytes // 2]
        if len(small) < max(min_parts, 2):
            return len(snap.parts), len(snap.parts)
        data = self._dataset(small)
        # from the schemas _dataset keeps, not the fragments' (which would load every footer)
        metas = {p: json.loads((self._schemas[p].metadata or {}).get(_META_KEY, b"{}")) for p in small}
        # parts of one params set are merged together, so a merged file describes its rows
        by_params: dict[Any, list[str]] = {}
        for path in small:
            by_params.setdefault(metas[path].get("params_hash"), []).append(path)
        groups: list[list[str]] = []
        for paths in by_params.values():
            group, size = [], 0
            for path in paths:
                group.append(path)
                size += snap.parts[path]
                if size >= target_bytes:
                    groups.append(group)
                    group, size = [], 0
            if group:
                groups.append(group)
        generation, token = snap.generation + 1, uuid.uuid4().hex[:8]
        written: list[str] = []
        try:
            for i, paths in enumerate(groups):
                name = f"compact-{generation:06d}-{token}-{i:03d}.parquet"
                schema = _with_metadata(data.schema.empty_table(), _merged_metadata([metas[p] for p in paths])).schema
                self._write_streamed(f"{snap.folder}/{name}", paths, schema)
                written.append(name)
            consumed = {p.rsplit("/", 1)[-1] for p in small}
            state = {
                "generation": generation,
                "compacted": sorted((set(snap.state["compacted"]) - consumed) | set(written)),
                # named until they are gone, so a part whose delete failed is never live again
                "retired": sorted(consumed - set(snap.state["compacted"])),
                "committed_at": _now(),
            }
            _io.create_exclusive(
                self.fs.unstrip_protocol(f"{snap.folder}/_generation-{generation:06d}.json"),
                json.dumps(state, indent=1).encode(),
            )
        except FileExistsError:  # another compaction committed this generation first
            for name in written:
                _io.remove(self.fs.unstrip_protocol(f"{snap.folder}/{name}"))
            return len(snap.parts), len(self.parts(table))
        except BaseException:
            for name in written:
                _io.remove(self.fs.unstrip_protocol(f"{snap.folder}/{name}"))
            raise
        # Committed: whoever lists from now on reads the merged files; a reader that listed
        # before sees the new generation (or a part gone) and reads again. The replaced parts
        # and what killed compactions left behind go now.
        self._remove_garbage(self._read_consistent(table, lambda s: s))
        return len(snap.parts), len(snap.parts) - len(small) + len(written)

    def _write_streamed(self, path: str, sources: Sequence[str], schema: pa.Schema) -> None:
        """Copy the rows of ``sources`` into one Parquet file at ``path``, a row group of about
        ``_ROW_GROUP_ROWS`` rows at a time, so the driver holds one row group, not the file.

        Locally the file is written under a temporary name and renamed; on an object store it
        is one multipart upload, which becomes visible whole when it completes.
        """
        text = [f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
        target = path if not self._local else f"{path.rsplit('/', 1)[0]}/.{path.rsplit('/', 1)[1]}.{uuid.uuid4().hex}"
        fs = self._arrow_fs()
        try:
            with (
                self.fs.open(target, "wb") as out,
                pq.ParquetWriter(
                    out, schema, compression="zstd", use_dictionary=text or False, write_statistics=[*text, "label"]
                ) as writer,
            ):
                pending: list[pa.Table] = []
                for source in sources:
                    pending.append(ds.dataset(source, format="parquet", filesystem=fs, schema=schema).to_table())
                    if sum(t.num_rows for t in pending) >= _ROW_GROUP_ROWS:
                        writer.write_table(pa.concat_tables(pending).replace_schema_metadata(schema.metadata))
                        pending = []
                if pending:
                    writer.write_table(pa.concat_tables(pending).replace_schema_metadata(schema.metadata))
            if self._local:
                os.replace(target, path)
        except BaseException:
            if self._local:
                _io.remove(target)
            raise

    def _remove_garbage(self, snap: _Snapshot) -> None:
        """Files of killed or beaten compactions, parts replaced by a committed one whose
        compaction was killed before removing them, and generation files no reader needs."""
        retired = [f"{snap.folder}/{n}" for n in snap.state.get("retired", [])]
        for path in snap.orphans + retired:
            _io.remove(self.fs.unstrip_protocol(path))
        for gen in range(max(snap.generation - 8, 1), snap.generation - 1):  # keep the last two
            _io.remove(self.fs.unstrip_protocol(f"{snap.folder}/_generation-{gen:06d}.json"))

    # -- the matrix ---------------------------------------------------------------------
    def _zarr_store(self, path: str):
        from zarr.storage import FsspecStore, LocalStore

        if self._local:
            return LocalStore(path)
        return FsspecStore.from_url(self.fs.unstrip_protocol(path))

    def _matrix_group(self, mode: str = "r"):
        import zarr

        return zarr.open_group(store=self._zarr_store(self._path("matrix.zarr")), mode=mode)

    def has_matrix(self) -> bool:
        return self.fs.exists(self._path("matrix.zarr", "zarr.json"))

    def matrix_attrs(self) -> dict[str, Any]:
        """The matrix's attributes (feature_names, rows, params_hashes, ...); {} without one."""
        if not self.has_matrix():
            return {}
        return dict(self._matrix_group().attrs)

    def matrix_rows(self) -> int:
        """Rows of the matrix that are current."""
        if not self.has_matrix():
            return 0
        return int(self._matrix_current()[1].sum())

    def _matrix_keys(self, group=None) -> pd.DataFrame:
        group = self._matrix_group() if group is None else group
        n = int(group.attrs["rows"])
        return pd.DataFrame({k: group[k][:n] for k in _KEYS})

    def _matrix_current(self):
        """(the matrix's group, which of its rows are current, their case ids): the rules of
        :func:`latest_extractions` on the key arrays as Zarr gives them, without a pandas
        frame of them (100k rows of text as Python strings were ~70 MB at a run's end)."""
        group = self._matrix_group()
        n = int(group.attrs["rows"])
        case_id, extracted_at = group["case_id"][:n], group["extracted_at"][:n]
        return group, _of_latest_extraction(case_id, extracted_at), case_id

    def append_matrix(self, keys: pd.DataFrame, values: np.ndarray, names: Sequence[str]) -> int:
        """Append rows (``keys``: case_id, label, extracted_at; ``values``: rows x ``names``).

        The rows' data is written first and the row count committed last, so a reader (and
        the next append) sees the append whole or not at all. Returns the matrix's row count.
        """
        import zarr

        m = len(keys)
        if not m:
            return self.matrix_rows()
        if not self.has_matrix():
            group = zarr.open_group(store=self._zarr_store(self._path("matrix.zarr")), mode="w")
            p = max(len(names), 1)
            group.create_array(
                "X", shape=(0, len(names)), dtype="float64", chunks=(_MATRIX_CHUNK_ROWS, p), fill_value=np.nan
            )
            group.create_array("case_id", shape=(0,), dtype=str, chunks=(_KEY_CHUNK_ROWS,))
            group.create_array("label", shape=(0,), dtype="int64", chunks=(_KEY_CHUNK_ROWS,))
            group.create_array("extracted_at", shape=(0,), dtype=str, chunks=(_KEY_CHUNK_ROWS,))
            held = self.params().get("params_hash")
            group.attrs.update(
                {"feature_names": list(names), "rows": 0, "params_hashes": [held] if held else [], "created_at": _now()}
            )
        group = self._matrix_group("r+")
        n = int(group.attrs["rows"])
        stored = list(group.attrs["feature_names"])
        have = set(stored)
        new = [c for c in names if c not in have]
        columns = stored + new
        x = group["X"]
        if x.shape != (n + m, len(columns)):
            x.resize((n + m, len(columns)))
        if list(names) == columns:  # the usual case: no reordered copy (a flush is ~32 MiB)
            block = np.asarray(values, dtype="float64")
        else:
            order = pd.Index(list(names)).get_indexer(columns)
            block = np.full((m, len(columns)), np.nan)
            present = order >= 0
            block[:, present] = np.asarray(values, dtype="float64")[:, order[present]]
        x[n : n + m] = block
        for k in _KEYS:
            arr = group[k]
            arr.resize((n + m,))
            col = keys[k].to_numpy()
            arr[n : n + m] = col.astype("int64") if k == "label" else col.astype(str)
        group.attrs.update({"feature_names": columns, "rows": n + m, "appended_at": _now()})
        return n + m

    def sync_matrix(self, batch_rows: int = 4096) -> int:
        """Append to the matrix the stored rows of the store's params it lacks (all of them
        when there is no matrix; after a run killed between a part and its append, those);
        returns how many were appended. Rows are streamed a batch at a time."""
        held = self.params().get("params_hash")
        for _ in range(_READ_ATTEMPTS):
            try:
                return self._sync_once(held, batch_rows)
            except (_Stale, FileNotFoundError):  # a compaction replaced parts: what is appended stays
                time.sleep(0.05)
        raise StoreError(f"store {self.url!r}: features/ kept changing while the matrix was synced")

    def _sync_once(self, held: str | None, batch_rows: int) -> int:
        snap = self._snapshot("features")
        data = self._dataset(list(snap.parts))
        if data is None:
            return 0
        keys = data.to_table(columns=[*_KEYS, "params_hash"]).to_pandas()
        if held is not None:
            keys = keys[keys["params_hash"] == held]
        if self.has_matrix():
            have = pd.MultiIndex.from_frame(self._matrix_keys().astype({"label": "int64"}))
            keys = keys[~pd.MultiIndex.from_frame(keys[list(_KEYS)].astype({"label": "int64"})).isin(have)]
        if keys.empty:
            return 0
        missing = pd.MultiIndex.from_frame(keys[list(_KEYS)].astype({"label": "int64"}))
        names = self.feature_names([held] if held else None)
        wanted = [*_KEYS, *[n for n in names if n in data.schema.names]]
        added = 0
        for batch in data.to_batches(columns=wanted, batch_size=batch_rows):
            frame = batch.to_pandas()
            frame = frame[pd.MultiIndex.from_frame(frame[list(_KEYS)].astype({"label": "int64"})).isin(missing)]
            if len(frame):
                self.append_matrix(
                    frame[list(_KEYS)], frame.reindex(columns=names).to_numpy("float64", na_value=np.nan), names
                )
                added += len(frame)
        return added

    def build_matrix(self) -> int:
        """Write ``matrix.zarr`` anew from the stored rows; returns its count of current rows."""
        path = self._path("matrix.zarr")
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)
        self.sync_matrix()
        return self.matrix_rows()

    def matrix(self):
        """The current rows of the feature matrix as a dask array, with their ids and names.

        Returns
        -------
        X : dask.array.Array
            float64, (current rows, features), in the order the rows were appended; nothing
            of it is loaded.
        rows : pandas.DataFrame
            ``case_id`` and ``label`` of each row.
        feature_names : list of str
        """
        import dask.array as da

        if not self.has_matrix():
            raise StoreError(f"store {self.url!r} has no matrix.zarr; run `radcluster extract` first")
        group, current, case_id = self._matrix_current()
        arr = group["X"]
        n, p = len(case_id), arr.shape[1]
        block = max(_MATRIX_CHUNK_ROWS, _DASK_CHUNK_BYTES // max(8 * p, 1) // _MATRIX_CHUNK_ROWS * _MATRIX_CHUNK_ROWS)
        x = da.from_zarr(arr, chunks=(block, p))[:n]
        if not current.all():
            x = x[np.flatnonzero(current)]
        rows = pd.DataFrame({"case_id": case_id[current].astype(object), "label": group["label"][:n][current]})
        return x, rows, list(group.attrs["feature_names"])

    def info(self) -> dict[str, Any]:
        """What ``radcluster store info`` prints: params, rows, the matrix, failed cases, runs,
        every table the store holds (``tables``: rows, part files and bytes of ``features``,
        ``failures`` and, once a run with perturbations wrote it, ``stability``) and a summary
        of the stability table per source (``stability``: see ``_stability_summary``)."""
        keys = self._keys()
        latest = self._latest(keys)
        current = keys.merge(latest, on=["case_id", "extracted_at"], how="inner") if len(keys) else keys
        stored = {"features": len(keys), "failures": len(self._read("failures", columns=["case_id"]))}
        tables = {}
        for table in TABLES:
            snap = self._read_consistent(table, lambda s: s)
            tables[table] = {
                "rows": int(stored[table]),
                "parts": len(snap.parts),
                "bytes": sum(snap.parts.values()),
                "compacted": len(snap.state.get("compacted", [])),
                "generation": snap.generation,
            }
        stability = self.stability()
        if stability is not None:
            tables["stability"] = {
                "rows": len(stability),
                "parts": 1,
                "bytes": self.fs.size(self._path(STABILITY_FILE)),
            }
        params = self.params()
        return {
            "store": self.url,
            "params_hash": params.get("params_hash"),
            "rows": int(len(keys)),
            "current_rows": int(len(current)),
            "cases": int(current["case_id"].nunique()) if len(current) else 0,
            "failed_cases": int(self.failures()["case_id"].nunique()) if tables["failures"]["parts"] else 0,
            "tables": tables,
            "matrix_rows": int(self.matrix_attrs().get("rows", 0)),
            "matrix_current_rows": self.matrix_rows(),
            "features": len(self.matrix_attrs().get("feature_names", [])),
            "runs": len(self.runs()),
            "stability": None if stability is None else _stability_summary(stability),
        }


# Koo & Li (2016)'s reading of an ICC (excellent, good, moderate, poor), by which a stability
# summary counts features: the store does not know the icc_min a training will filter with.
_ICC_BANDS = (("ICC >= 0.9", 0.9), ("0.75-0.9", 0.75), ("0.5-0.75", 0.5), ("< 0.5", -np.inf))


def _stability_summary(table: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Per source of a stability table (``feature, source, icc, n, k``): its features, the
    fewest and most scans a feature's ICC was computed over (``n``), the measurements per scan
    (``k``: the scan and its copies, or scan and retest), and how many features fall in each of
    :data:`_ICC_BANDS`; ``undefined`` counts NaN ICCs (a feature without variance, or with fewer
    than 2 scans complete in every copy)."""
    out = {}
    for source, part in table.groupby("source", sort=True):
        icc = part["icc"].to_numpy(dtype=float)
        bands, upper = {}, np.inf
        for name, lower in _ICC_BANDS:
            bands[name] = int(((icc >= lower) & (icc < upper)).sum())
            upper = lower
        bands["undefined"] = int(np.isnan(icc).sum())
        out[str(source)] = {
            "features": len(part),
            "scans": [int(part["n"].min()), int(part["n"].max())],
            "k": int(part["k"].max()),
            "icc": bands,
        }
    return out


def latest_extractions(keys: pd.DataFrame) -> pd.DataFrame:
    """``case_id`` and ``extracted_at`` of each case's latest extraction in ``keys``, by case."""
    current = _of_latest_extraction(keys["case_id"].to_numpy(), keys["extracted_at"].to_numpy())
    latest = keys.loc[current, ["case_id", "extracted_at"]].drop_duplicates("case_id")
    return latest.sort_values("case_id", kind="stable").reset_index(drop=True)


def _of_latest_extraction(case_id: np.ndarray, extracted_at: np.ndarray) -> np.ndarray:
    """Whether each row is of its case's latest extraction: the one rule of current rows, for
    the Parquet keys (:func:`latest_extractions`) and the matrix's key arrays alike. A sort,
    not a groupby (pandas reduces text columns group by group in Python: seconds at 100k
    cases), and no Python object per row for the matrix's arrays."""
    if not len(case_id):
        return np.zeros(0, dtype=bool)
    order = np.lexsort((extracted_at, case_id))
    cases, stamps = case_id[order], extracted_at[order]
    starts = np.ones(len(order), dtype=bool)
    starts[1:] = cases[1:] != cases[:-1]
    group = np.cumsum(starts) - 1
    ends = np.flatnonzero(np.r_[starts[1:], True])  # each case's last row: its latest stamp
    current = np.empty(len(order), dtype=bool)
    current[order] = stamps == stamps[ends][group]
    return current


def _merged_metadata(metas: list[dict[str, Any]]) -> dict[str, Any]:
    """One part's metadata for rows merged from parts: their feature names and IBSI names
    together, the rest of the newest part's."""
    out = dict(metas[-1])
    out["features"] = list(dict.fromkeys(n for m in metas for n in m.get("features", [])))
    out["ibsi_names"] = {k: v for m in metas for k, v in m.get("ibsi_names", {}).items()}
    return out


def _read_error(url: str, err: Exception) -> Exception:
    """A part that vanished (a compaction removed it: read again) or a StoreError."""
    text = str(err)
    if isinstance(err, FileNotFoundError) or "No such file" in text or "NoSuchKey" in text or "Not Found" in text:
        return FileNotFoundError(text)
    return StoreError(f"store {url!r}: a part is not readable Parquet: {err}")


def _read_part(path: str, *, schema: pa.Schema, filesystem, expr, latest: pd.DataFrame | None) -> pd.DataFrame:
    """One partition of :meth:`Store.features` with ``as_dask=True``: a part's current rows."""
    frame = (
        ds.dataset(path, format="parquet", filesystem=filesystem, schema=schema)
        .to_table(columns=schema.names, filter=expr)
        .to_pandas()
    )
    if latest is not None:
        frame = frame.merge(latest, on=["case_id", "extracted_at"], how="inner", sort=False)
    return frame


def open_store(url: str | os.PathLike, *, must_exist: bool = True) -> Store:
    """Open the feature store at ``url`` (a folder or an fsspec URL).

    Examples
    --------
    >>> store = open_store("store/")                                  # doctest: +SKIP
    >>> store.features(["original_firstorder_Mean"], filters=[("label", "==", 1)])  # doctest: +SKIP
    >>> X, rows, names = store.matrix()                               # doctest: +SKIP
    """
    store = Store(os.fspath(url))
    if must_exist and not store.fs.exists(store.root):
        raise StoreError(f"no feature store at {os.fspath(url)!r}")
    return store
