"""What the three benchmarks share: commands, timing, reading both tools' output, verdicts.

Each benchmark runs radcluster and its peer (pyradiomics' own batch CLI, or radcluster with
fewer workers) on the same files, with the same params and the same number of cores, in one
run, and prints the figures side by side. Everything here is plumbing for that; the
benchmark scripts hold only what they measure.

Timing is of whole commands (process start, imports, cluster start-up and output included),
by wall clock, best of ``--repeat`` runs (the machine is shared, so the fastest run is the
least disturbed one). Next to each figure the 1-minute load average before the run is
printed: a load well above the number of cores means the figure is contaminated by other
work on the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = [
    "BenchError",
    "CASES_DIR",
    "REAL_CASES",
    "Timing",
    "Agreement",
    "base_parser",
    "add_split_peer_flag",
    "header",
    "workdir",
    "warm_cache",
    "run_command",
    "run_parallel",
    "best_of",
    "radcluster_cmd",
    "pyradiomics_cmd",
    "write_csv",
    "radcluster_features",
    "pyradiomics_features",
    "compare",
    "Pair",
    "versus_pyradiomics",
    "verdict",
    "parity",
    "table",
    "main",
]

CASES_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "pyradiomics-cases"
REAL_CASES = ("brain1", "brain2", "breast1", "lung1", "lung2")
# Console scripts of the interpreter running the benchmark (the project's venv).
_BIN = Path(sys.executable).parent
# Relative difference at or below which two feature values count as the same (the tests' bound).
PARITY_RTOL = 1e-6
# pyradiomics feature columns: <image type>_<feature class>_<feature>, e.g. wavelet-LLH_glcm_Idm.
_FEATURE_COLUMN = re.compile(r"^[^_]+_(shape|shape2D|firstorder|glcm|glrlm|glszm|gldm|ngtdm)_[A-Za-z0-9]+$")


class BenchError(RuntimeError):
    """A benchmark could not produce its figures (a command failed, output is missing)."""


@dataclass
class Timing:
    """One timed command."""

    wall: float  # seconds, start of the process to its exit
    cpu: float  # user + system seconds of the command and every process it started
    driver_cpu: float  # user + system seconds of the command's own process (no workers)
    load: float  # 1-minute load average just before the start
    stdout: str
    output: Path | None = None  # what the command wrote (store folder or CSV)


@dataclass
class Agreement:
    """How radcluster's rows compare with the peer's, feature by feature."""

    rows: int  # (case, label) rows present in both
    features: int  # feature columns compared
    worst: float  # largest relative difference, |a - b| / max(|b|, 1e-12); NaN vs NaN counts as 0
    where: str  # row and feature of the largest difference
    unequal: int  # values not bit-identical
    only_radcluster: int  # rows missing from the peer's output (or empty there)
    only_peer: int  # rows missing from radcluster's store
    missing_features: list[str]  # peer feature columns absent from radcluster's store


def base_parser(description: str) -> argparse.ArgumentParser:
    """Flags every benchmark has."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--workers", type=int, default=2, help="radcluster local worker processes = pyradiomics --jobs")
    p.add_argument("--repeat", type=int, default=1, help="runs of each command; the fastest counts")
    p.add_argument(
        "--data", type=Path, default=CASES_DIR, help="folder with <case>_image.nrrd, <case>_label.nrrd and params/"
    )
    p.add_argument("--keep", action="store_true", help="keep the temporary folder and print its path")
    return p


def add_split_peer_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--split-peer",
        action="store_true",
        help="also time pyradiomics as N side-by-side '--jobs 1' processes (no busy-waiting driver)",
    )


class PeakSampler:
    """Peak RSS of a set of processes (name -> pid), sampled every ``interval`` seconds in a thread."""

    def __init__(self, pids: dict[str, int], interval: float = 0.2):
        import psutil

        self.procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.peak = dict.fromkeys(pids, 0)
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, proc in self.procs.items():
                try:
                    self.peak[name] = max(self.peak[name], proc.memory_info().rss)
                except Exception:  # a process that ended keeps its last peak
                    pass
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _versions() -> str:
    from radcluster._software import software_versions

    found = software_versions("pyradiomics", "SimpleITK", "dask", "distributed", "python")
    # pyradiomics' value already names its distribution ("pyradiomics-bhklab 3.1.4")
    return ", ".join(v if k == "pyradiomics" else f"{'Python' if k == 'python' else k} {v}" for k, v in found.items())


def header(title: str, args: argparse.Namespace) -> None:
    import psutil

    print(f"== {title}")
    print(
        f"date {_dt.datetime.now().astimezone().isoformat(timespec='seconds')}; machine: "
        f"{os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.1f} GiB RAM; "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    print(_versions())
    shown = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    print(f"arguments: {shown}", flush=True)


@contextlib.contextmanager
def workdir(prefix: str, keep: bool) -> Iterator[Path]:
    """A temporary folder, removed at the end unless ``keep``."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        if keep:
            print(f"kept {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


def warm_cache(paths: Sequence[str | Path]) -> None:
    """Read every file once, so neither tool pays the first read from disk."""
    for p in dict.fromkeys(str(p) for p in paths):
        with open(p, "rb") as f:
            while f.read(1 << 22):
                pass


def _cpu_sampler(pid: int, out: list[float], stop: threading.Event) -> None:
    """Sample the CPU seconds of the process (out[0]) and of it with all its descendants (out[1]).

    A process tree is needed besides ``RUSAGE_CHILDREN``: radcluster's workers are forked by
    multiprocessing's fork server, which nobody waits for, so their CPU never reaches the
    parent's rusage.
    """
    import psutil

    seen: dict[int, float] = {}
    try:
        proc = psutil.Process(pid)
        while not stop.is_set():
            t = proc.cpu_times()
            out[0] = t.user + t.system
            for p in [proc, *proc.children(recursive=True)]:
                try:
                    t = p.cpu_times()
                    seen[p.pid] = t.user + t.system
                except psutil.Error:
                    pass
            out[1] = sum(seen.values())
            stop.wait(0.2)
    except psutil.Error:  # the process ended between two samples
        pass


def run_command(cmd: Sequence[str], *, what: str, output: Path | None = None) -> Timing:
    """Run a command to its end and time it; raise :class:`BenchError` if it fails."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load = os.getloadavg()[0]
    env = dict(os.environ)
    # As radcluster's CLI does for its workers: pyradiomics' per-case warnings are noise here.
    env.setdefault("DASK_LOGGING__RADIOMICS", "error")
    start = time.perf_counter()
    proc = subprocess.Popen([str(c) for c in cmd], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    own = [0.0, 0.0]
    stop = threading.Event()
    sampler = threading.Thread(target=_cpu_sampler, args=(proc.pid, own, stop), daemon=True)
    sampler.start()
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - start
    stop.set()
    sampler.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise BenchError(
            f"{what} failed with exit code {proc.returncode}: {' '.join(map(str, cmd))}\n"
            f"stdout (end):\n{stdout[-3000:]}\nstderr (end):\n{stderr[-3000:]}"
        )
    waited = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    # rusage misses processes nobody waited for; the samples miss a process's last 0.2 s
    return Timing(wall, max(waited, own[1]), own[0], load, stdout, output)


def run_parallel(cmds: Sequence[Sequence[str]], *, what: str, output: Path | None = None) -> Timing:
    """Run commands side by side, timed until the last one ends (``driver_cpu`` is not measured)."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load = os.getloadavg()[0]
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        # Files, not pipes: a process must never wait for the benchmark to read its output.
        files = [
            (stack.enter_context(tempfile.TemporaryFile("w+")), stack.enter_context(tempfile.TemporaryFile("w+")))
            for _ in cmds
        ]
        procs = [
            subprocess.Popen([str(c) for c in cmd], stdout=out, stderr=err, text=True)
            for cmd, (out, err) in zip(cmds, files, strict=True)
        ]
        for proc in procs:
            proc.wait()
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        texts = []
        for out, err in files:
            out.seek(0)
            err.seek(0)
            texts.append((out.read(), err.read()))
    for cmd, proc, (stdout, stderr) in zip(cmds, procs, texts, strict=True):
        if proc.returncode != 0:
            raise BenchError(
                f"{what} failed with exit code {proc.returncode}: {' '.join(map(str, cmd))}\n"
                f"stdout (end):\n{stdout[-3000:]}\nstderr (end):\n{stderr[-3000:]}"
            )
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Timing(wall, cpu, math.nan, load, "".join(o for o, _ in texts), output)


def best_of(repeat: int, runs: dict[str, Callable[[int], Timing]]) -> dict[str, Timing]:
    """Run each command ``repeat`` times, interleaved, and keep the fastest run of each.

    Interleaving (a, b, a, b, ...) spreads a burst of load from other users over both.
    """
    best: dict[str, Timing] = {}
    for i in range(max(1, repeat)):
        for name, run in runs.items():
            t = run(i)
            print(f"   {name} run {i + 1}: {t.wall:.1f} s (load {t.load:.2f})", flush=True)
            if name not in best or t.wall < best[name].wall:
                best[name] = t
    return best


def radcluster_cmd(manifest: Path, params: Path, out: Path, workers: int, label_table: Path | None = None) -> list[str]:
    cmd = [
        str(_BIN / "radcluster"),
        "extract",
        str(manifest),
        "--params",
        str(params),
        "--out",
        str(out),
        "--workers",
        str(workers),
        "--dashboard-address",
        ":0",
    ]
    if label_table is not None:
        cmd += ["--label-table", str(label_table)]
    return cmd


def pyradiomics_cmd(batch_csv: Path, params: Path, out_csv: Path, jobs: int) -> list[str]:
    return [
        str(_BIN / "pyradiomics"),
        str(batch_csv),
        "--param",
        str(params),
        "--jobs",
        str(jobs),
        "-o",
        str(out_csv),
        "-f",
        "csv",
    ]


def write_csv(path: Path, rows: list[dict]) -> Path:
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def radcluster_features(store: Path) -> pd.DataFrame:
    """Feature columns of radcluster's store, indexed by (case_id, label)."""
    from radcluster import open_store

    frame = open_store(str(store)).features()
    names = [c for c in frame.columns if _FEATURE_COLUMN.match(c)]
    out = frame.set_index(["case_id", "label"])[names]
    out.index = pd.MultiIndex.from_arrays(
        [out.index.get_level_values(0).astype(str), out.index.get_level_values(1).astype(int)],
        names=["case_id", "label"],
    )
    return out.astype(float)


def pyradiomics_features(out_csv: Path, case_column: str = "case_id") -> pd.DataFrame:
    """Feature columns of pyradiomics' batch CSV, indexed by (case_id, label).

    Rows of cases pyradiomics failed on (it writes them with no feature values) are dropped.
    Values are parsed with round-trip precision: pyradiomics writes the shortest repr of
    each float64, so a value read back is the value computed.
    """
    frame = pd.read_csv(out_csv, dtype={case_column: str}, float_precision="round_trip")
    label = frame["Label"].astype(int) if "Label" in frame else pd.Series(1, index=frame.index)
    names = [c for c in frame.columns if _FEATURE_COLUMN.match(c)]
    out = frame[names].astype(float)
    out.index = pd.MultiIndex.from_arrays([frame[case_column].astype(str), label], names=["case_id", "label"])
    return out[out.notna().any(axis=1)]


def compare(rc: pd.DataFrame, peer: pd.DataFrame) -> Agreement:
    """Largest relative difference between radcluster's and the peer's values, row by row."""
    rows = rc.index.intersection(peer.index)
    names = [c for c in peer.columns if c in rc.columns]
    a = rc.loc[rows, names].to_numpy(float)
    b = peer.loc[rows, names].to_numpy(float)
    both_nan = np.isnan(a) & np.isnan(b)
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = np.abs(a - b) / np.maximum(np.abs(b), 1e-12)
    rel = np.where(both_nan, 0.0, np.where(np.isnan(rel), np.inf, rel))
    worst, where = 0.0, "-"
    if rel.size:
        i, j = np.unravel_index(int(np.argmax(rel)), rel.shape)
        worst = float(rel[i, j])
        where = f"{rows[i][0]} label {rows[i][1]}: {names[j]} ({a[i, j]!r} vs {b[i, j]!r})"
    unequal = int(((a != b) & ~both_nan).sum())
    return Agreement(
        len(rows),
        len(names),
        worst,
        where,
        unequal,
        len(rc.index.difference(peer.index)),
        len(peer.index.difference(rc.index)),
        [c for c in peer.columns if c not in rc.columns],
    )


@dataclass
class Pair:
    """radcluster and pyradiomics' batch CLI on the same cases: timings and agreement."""

    radcluster: Timing
    pyradiomics: Timing
    agreement: Agreement
    run_seconds: float  # radcluster's own run record: submit to matrix built (no process or cluster start-up)
    split: Timing | None = None  # pyradiomics --jobs 1 on N slices of the batch CSV, side by side

    @property
    def ratio(self) -> float:
        return self.pyradiomics.wall / self.radcluster.wall

    @property
    def split_ratio(self) -> float:
        return self.split.wall / self.radcluster.wall if self.split is not None else math.nan


def versus_pyradiomics(
    folder: Path,
    tag: str,
    manifest: Path,
    batch_csv: Path,
    params: Path,
    *,
    workers: int,
    repeat: int,
    label_table: Path | None = None,
    split_peer: bool = False,
) -> Pair:
    """Time ``radcluster extract`` and ``pyradiomics`` (batch) on the same cases and compare rows.

    ``manifest`` (radcluster) and ``batch_csv`` (pyradiomics: case_id, Image, Mask[, Label])
    must list the same scans; a row that either tool did not produce is an error, since the
    two timings would then not cover the same work.

    ``split_peer`` also times pyradiomics without its batch driver: the batch CSV dealt
    round-robin into ``workers`` slices, each run by its own ``pyradiomics --jobs 1`` process,
    all at once. pyradiomics' ``--jobs N`` driver waits for its pool in a busy loop
    (``while not task.ready(): pass``) that keeps one core busy for the whole run; the split
    run shows what pyradiomics does on the same cores without that loop.
    """
    from radcluster import open_store

    def rc(i: int) -> Timing:
        out = folder / f"{tag}-radcluster-{i}"
        return run_command(
            radcluster_cmd(manifest, params, out, workers, label_table), what=f"radcluster extract ({tag})", output=out
        )

    def py(i: int) -> Timing:
        out = folder / f"{tag}-pyradiomics-{i}.csv"
        return run_command(pyradiomics_cmd(batch_csv, params, out, workers), what=f"pyradiomics ({tag})", output=out)

    def py_split(i: int) -> Timing:
        rows = pd.read_csv(batch_csv, dtype=str)
        cmds = []
        for k in range(min(workers, len(rows))):  # fewer rows than workers (one big scan): one per row
            part = write_csv(folder / f"{tag}-batch-part{k}.csv", rows.iloc[k::workers].to_dict("records"))
            cmds.append(pyradiomics_cmd(part, params, folder / f"{tag}-pyradiomics-split-{i}-part{k}.csv", 1))
        return run_parallel(cmds, what=f"pyradiomics --jobs 1 x {workers} ({tag})")

    runs = {"radcluster": rc, "pyradiomics": py}
    if split_peer:
        runs["pyradiomics split"] = py_split
    best = best_of(repeat, runs)
    agreement = compare(
        radcluster_features(best["radcluster"].output), pyradiomics_features(best["pyradiomics"].output)
    )
    if agreement.only_peer or agreement.only_radcluster or not agreement.rows:
        raise BenchError(
            f"{tag}: the two tools did not extract the same rows ({parity(agreement)}); "
            f"see {best['pyradiomics'].output} and {best['radcluster'].output} (--keep)"
        )
    record = open_store(str(best["radcluster"].output)).runs()[-1]
    return Pair(
        best["radcluster"], best["pyradiomics"], agreement, float(record["seconds"]), best.get("pyradiomics split")
    )


def verdict(value: float, target: float, *, higher_is_better: bool = True) -> str:
    met = value >= target if higher_is_better else value < target
    return "target met" if met else "target missed"


def parity(agreement: Agreement) -> str:
    """One line: rows and features compared, the largest difference, and whether it is within bound."""
    ok = (
        agreement.worst <= PARITY_RTOL
        and not agreement.missing_features
        and not agreement.only_peer
        and not agreement.only_radcluster
    )
    text = (
        f"{agreement.rows} rows x {agreement.features} features compared; largest relative difference "
        f"{agreement.worst:.3g} ({agreement.unequal} values not bit-identical); "
        f"{'identical within 1e-6' if ok else 'NOT identical'}"
    )
    if agreement.worst > 0:
        text += f"; largest at {agreement.where}"
    if agreement.missing_features:
        text += f"; {len(agreement.missing_features)} peer features missing, e.g. {agreement.missing_features[:3]}"
    if agreement.only_peer or agreement.only_radcluster:
        text += (
            f"; rows only in the peer's output: {agreement.only_peer}, "
            f"only in radcluster's: {agreement.only_radcluster}"
        )
    return text


def table(header_row: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain fixed-width table (what the README quotes verbatim)."""
    cells = [[str(c) for c in header_row]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header_row))]
    lines = [
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.3g}" if abs(value) < 0.01 and value else f"{value:.2f}"
    return str(value)


def main(run: Callable[[], None]) -> None:
    """Entry point: exit 1 with the reason on an error, 0 otherwise (a missed target is not an error)."""
    started = time.perf_counter()
    try:
        run()
    except BenchError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    print(f"benchmark took {time.perf_counter() - started:.0f} s")
