"""Training at scale: radcluster on a Dask LocalCluster vs the same pipeline in one process.

1. Writes a synthetic store: ``matrix.zarr`` with ``--rows`` x ``--features`` float64 values,
   chunk by chunk (never whole in memory), in the layout :meth:`radcluster.store.Store.matrix`
   reads, plus ``clinical.parquet`` holding the binary ``outcome`` keyed by ``case_id``. The
   features are ``--factors`` latent factors mixed into every feature plus noise; the outcome
   is a logistic function of the factors, so PCA keeps the signal.
2. ``radcluster`` training (:func:`radcluster.jobs.train.train_store`: mean imputation, constant
   filter, dask-ml StandardScaler, randomized PCA on one float32 copy of the scaled rows,
   ``xgboost.dask`` on a DaskQuantileDMatrix) on a LocalCluster with
   ``--workers`` single-threaded workers, a held-out test fifth, no cross-validation; it writes
   a registry version with its report like any training.
3. The same pipeline in a separate single process (scikit-learn SimpleImputer,
   StandardScaler, PCA; xgboost with ``n_jobs = --workers``) on the matrix loaded into memory,
   on the same development/test split.

Prints the 1-minute load before the run, the time of each and their ratio (target <= 1.2),
the peak resident memory of each worker (sampled with psutil), of the client and of the single
process (``ru_maxrss``), each as a ratio to the matrix's size (target for a worker: < 1) and
to the single process, and both test AUCs, which must agree within ``--tolerance`` (exit code
1 otherwise; a missed time or memory target prints ``target missed`` and exits 0).

    python benchmarks/train_scale.py                          # 200,000 x 1,500 (minutes)
    python benchmarks/train_scale.py --rows 20000 --features 200   # a quick run
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import PeakSampler

CHUNK_ROWS = 4096


def write_store(root: Path, rows: int, features: int, factors: int, seed: int) -> float:
    """Write the synthetic store chunk by chunk; returns seconds taken."""
    import pandas as pd
    import zarr

    started = time.perf_counter()
    store_dir = root / "store"
    if store_dir.exists():
        shutil.rmtree(store_dir)
    store_dir.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    loadings = rng.normal(size=(factors, features)) / np.sqrt(factors)
    scales = np.exp(rng.normal(0, 1.5, features))  # radiomics-like spread of feature scales
    offsets = rng.normal(0, 5, features) * scales
    beta = np.zeros(factors)
    beta[: min(4, factors)] = [1.2, -1.0, 0.8, 0.6][: min(4, factors)]
    group = zarr.open_group(store=str(store_dir / "matrix.zarr"), mode="w")
    x = group.create_array(
        "X", shape=(rows, features), dtype="float64", chunks=(min(rows, CHUNK_ROWS), features), fill_value=np.nan
    )
    outcome = np.empty(rows, dtype=np.int64)
    seeds = np.random.SeedSequence(seed + 1).spawn(-(-rows // CHUNK_ROWS))
    for k, start in enumerate(range(0, rows, CHUNK_ROWS)):
        r = np.random.default_rng(seeds[k])
        n = min(CHUNK_ROWS, rows - start)
        latent = r.normal(size=(n, factors))
        block = (latent @ loadings + 0.7 * r.normal(size=(n, features))) * scales + offsets
        x[start : start + n] = block
        p = 1 / (1 + np.exp(-(latent @ beta)))
        outcome[start : start + n] = r.random(n) < p
    width = len(str(rows))
    case_ids = np.array([f"bench-{i:0{width}d}" for i in range(rows)])
    group.create_array("case_id", shape=(rows,), dtype=str, chunks=(rows,))[:] = case_ids
    group.create_array("label", shape=(rows,), dtype="int64", chunks=(rows,))[:] = np.ones(rows, dtype=np.int64)
    # one extraction of every case: all rows current
    extracted_at = np.full(rows, time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()))
    group.create_array("extracted_at", shape=(rows,), dtype=str, chunks=(rows,))[:] = extracted_at
    group.attrs.update(
        {
            "feature_names": [f"original_bench_F{j:04d}" for j in range(features)],
            "rows": rows,
            "params_hashes": ["benchmark"],
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
    )
    pd.DataFrame({"case_id": case_ids, "outcome": outcome}).to_parquet(root / "clinical.parquet", index=False)
    return time.perf_counter() - started


def train_spec(args) -> dict:
    return {
        "target": "outcome",
        "clinical": str(Path(args.out) / "clinical.parquet"),
        "model": "xgboost",
        "params": {
            "xgboost": {
                "n_estimators": args.trees,
                "max_depth": 4,
                "learning_rate": 0.1,
                "subsample": 1.0,
                "colsample_bytree": 1.0,
                "tree_method": "hist",
            }
        },
        "preprocess": {"impute": "mean", "max_mode_fraction": None, "pca": args.components, "pca_solver": "randomized"},
        "cv": {"folds": 0, "test_fraction": 0.2, "early_stopping_rounds": None, "seed": 0},
        "metrics": {"bootstrap": 200},
        "persist": not args.no_persist,
    }


def run_distributed(args) -> dict:
    from distributed import Client, LocalCluster

    from radcluster.jobs.train import train_store

    root = Path(args.out)
    with (
        LocalCluster(
            n_workers=args.workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            host="127.0.0.1",
            memory_limit=args.memory_limit,
        ) as cluster,
        Client(cluster) as client,
    ):
        import xgboost.dask  # noqa: F401  (imported explicitly, as xgboost requires)

        client.run(lambda: __import__("xgboost.dask"))  # warm the workers' imports, not timed
        pids = {f"worker {i}": pid for i, pid in enumerate(client.run(os.getpid).values())}
        pids["client"] = os.getpid()
        with PeakSampler(pids) as sampler:
            started = time.perf_counter()
            result = train_store(str(root / "store"), train_spec(args), client, root / "registry")
            seconds = time.perf_counter() - started
    test = result.metrics["test"]
    return {
        "seconds": seconds,
        "fit_seconds": result.metrics["seconds"],
        "auc": test["roc_auc"],
        "auc_ci": test["roc_auc_ci"],
        "n_test": test["n"],
        "peak_rss": sampler.peak,
        "version": str(result.version),
        "workers": args.workers,
    }


def run_single(args) -> dict:
    """The same pipeline in this process (called in a child process for a clean ru_maxrss)."""
    import pandas as pd
    import xgboost
    import zarr
    from sklearn.decomposition import PCA
    from sklearn.impute import SimpleImputer
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import StandardScaler

    from radcluster.learn.cv import make_splits

    root = Path(args.out)
    started = time.perf_counter()
    group = zarr.open_group(store=str(root / "store" / "matrix.zarr"), mode="r")
    X = group["X"][:]
    case_ids = np.array(group["case_id"][:].tolist())
    clinical = pd.read_parquet(root / "clinical.parquet").set_index("case_id")
    y = clinical.loc[case_ids, "outcome"].to_numpy()
    loaded = time.perf_counter() - started
    # radcluster's held-out split (same function, same seed), so both test on the same rows
    k = round(1 / 0.2)
    dev, test = make_splits(k, y, case_ids, seed=1000, what="test split")[0]
    X_dev, X_test = X[dev], X[test]
    del X
    spec = train_spec(args)
    imputer = SimpleImputer(strategy="mean", copy=False).fit(X_dev)
    keep = X_dev.std(axis=0) > 1e-12
    scaler = StandardScaler(copy=False).fit(imputer.transform(X_dev)[:, keep])
    Xs = scaler.transform(imputer.transform(X_dev)[:, keep])
    pca = PCA(n_components=args.components, svd_solver="randomized", iterated_power=4, random_state=0, copy=False)
    Z_dev = pca.fit_transform(Xs)  # copy=False: fit overwrites Xs, so fit_transform, not fit().transform()
    del Xs
    model = xgboost.XGBClassifier(n_jobs=args.workers, random_state=0, **spec["params"]["xgboost"])
    model.fit(Z_dev, y[dev])
    Z_test = pca.transform(scaler.transform(imputer.transform(X_test)[:, keep]))
    auc = float(roc_auc_score(y[test], model.predict_proba(Z_test)[:, 1]))
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "load_seconds": loaded,
        "auc": auc,
        "n_test": int(len(test)),
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def _gb(value: float) -> str:
    return f"{value / 2**30:.2f} GiB"


TIME_TARGET = 1.2  # radcluster's time over the single process's, at most


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--features", type=int, default=1_500)
    parser.add_argument("--factors", type=int, default=10, help="latent factors carrying the signal")
    parser.add_argument("--components", type=int, default=20, help="PCA components")
    parser.add_argument("--trees", type=int, default=200, help="xgboost boosting rounds")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--memory-limit", default="auto", help="per-worker memory limit")
    parser.add_argument(
        "--no-persist",
        action="store_true",
        help="radcluster re-reads the Zarr matrix in each pass instead of holding it in workers",
    )
    parser.add_argument("--tolerance", type=float, default=0.01, help="largest allowed AUC difference")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="working folder (default: a temp folder, removed at the end)")
    parser.add_argument("--reuse", action="store_true", help="keep an existing store in --out")
    parser.add_argument("--single-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.single_only:  # the child process of the single-process run
        print(json.dumps(run_single(args)))
        return 0

    tmp = None
    if args.out is None:
        tmp = tempfile.mkdtemp(prefix="radcluster-bench-")
        args.out = tmp
    root = Path(args.out)
    matrix_bytes = args.rows * args.features * 8
    try:
        print(
            f"matrix: {args.rows:,} rows x {args.features:,} features "
            f"({_gb(matrix_bytes)} float64), {args.components} PCA components, "
            f"{args.trees} trees, {args.workers} worker(s); folder {root}",
            flush=True,
        )
        if args.reuse and (root / "store" / "matrix.zarr").exists():
            print("store: reused", flush=True)
        else:
            seconds = write_store(root, args.rows, args.features, args.factors, args.seed)
            print(f"store written chunk by chunk in {seconds:.1f} s", flush=True)

        load = Path("/proc/loadavg").read_text().split()[0]
        dist = run_distributed(args)
        print(
            f"radcluster (Dask, {args.workers} workers): {dist['seconds']:.1f} s, test AUC {dist['auc']:.4f}",
            flush=True,
        )
        child = [sys.executable, __file__, "--single-only", *(argv if argv is not None else sys.argv[1:])]
        if "--out" not in child:
            child += ["--out", str(root)]
        done = subprocess.run(child, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(done.stderr, file=sys.stderr)
            return 2
        single = json.loads(done.stdout.strip().splitlines()[-1])
        print(
            f"single process (scikit-learn + xgboost, matrix in memory): {single['seconds']:.1f} s "
            f"(of which {single['load_seconds']:.1f} s loading), test AUC {single['auc']:.4f}",
            flush=True,
        )

        diff = abs(dist["auc"] - single["auc"])
        ratio = dist["seconds"] / single["seconds"]
        peaks = dist["peak_rss"]
        workers = {k: v for k, v in peaks.items() if k.startswith("worker")}
        missed = [] if ratio <= TIME_TARGET else ["time"]
        missed += [k for k, v in workers.items() if v >= matrix_bytes]
        print("\n=== train_scale results ===")
        print(f"rows x features:          {args.rows:,} x {args.features:,} ({_gb(matrix_bytes)} float64)")
        print(f"load before:              {load}")
        print(
            f"radcluster time:          {dist['seconds']:.1f} s ({args.workers} workers x 1 thread; "
            f"{dist['fit_seconds']:.1f} s to the evaluated model, the rest registry + report)"
        )
        print(f"single-process time:      {single['seconds']:.1f} s (xgboost n_jobs={args.workers})")
        print(f"ratio radcluster/single:  {ratio:.2f} (target <= {TIME_TARGET})")
        print(f"{'peak RSS':<26}{'GiB':>6} {'/ matrix':>9} {'/ single':>9}")
        for name, value in [*peaks.items(), ("single process", single["peak_rss"])]:
            print(
                f"  {name + ':':<24}{value / 2**30:>6.2f} {value / matrix_bytes:>9.2f} "
                f"{value / single['peak_rss']:>9.2f}{'   (target < 1.00 of the matrix)' if name in workers else ''}"
            )
        print(f"  workers together:       {sum(workers.values()) / 2**30:>6.2f}")
        print(
            f"test AUC radcluster:      {dist['auc']:.4f} (95% CI {dist['auc_ci'][0]:.4f}-{dist['auc_ci'][1]:.4f},"
            f" n={dist['n_test']:,})"
        )
        print(f"test AUC single process:  {single['auc']:.4f}")
        print(
            f"AUC difference:           {diff:.4f} ({'OK' if diff <= args.tolerance else 'FAIL'}, "
            f"tolerance {args.tolerance})"
        )
        print(f"model version:            {dist['version']}")
        print(f"targets:                  {'target missed: ' + ', '.join(missed) if missed else 'met'}")
        return 0 if diff <= args.tolerance else 1
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
