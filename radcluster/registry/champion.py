"""Which version of a registry serves: the champion, the hold-out it was judged on, the retrain
lock, and the record of every decision.

``champion.json`` is replaced atomically (a reader sees the old champion or the new one,
never half of either: a rename in a local folder, a single upload on an object store); a
lock file held for a whole retrain makes two retrains on one registry exclusive, so they
cannot both promote. Every decision is written to ``decisions/<time>.json``. The hold-out
is a set of patients drawn once per registry (``holdout.json``, versioned by the hash of its
case ids) that no model of the registry is trained on.

The registry may be a local folder or an fsspec URL (``s3://...``). The lock is created with
an exclusive create: ``O_EXCL`` locally, a conditional PUT (``If-None-Match: *``) on S3, which
the server refuses when the lock exists (AWS S3 and moto honour it; an S3-compatible server
that ignores the header gives no exclusion). On other object stores the create is check
then write, best effort, and a warning says so. A lock left by a dead process is taken over
only when that process ran on this host; otherwise the error names the holder, and the lock
file is to be deleted by hand once that retrain is known to be gone.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import _io
from ..errors import RegistryError
from .versions import storage_failures

logger = logging.getLogger(__name__)

__all__ = ["registry_lock", "read_champion", "holdout_cases", "promote", "record_decision"]


def _write_json(path: str, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half."""
    with storage_failures(path, "write"):
        _io.write_json(path, data)


def _read_json(path: str) -> dict[str, Any] | None:
    """The JSON file at ``path``, or None when there is none."""
    with storage_failures(path, "read"):
        return _io.read_json(path)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (dead, not yet reaped) holds no lock either
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    return True


def _create(lock: str, data: bytes) -> bool:
    """Create the lock file exclusively; False when it exists."""
    with storage_failures(lock, "create the retrain lock"):
        try:
            _io.create_exclusive(lock, data)
        except FileExistsError:
            return False
    return True


@contextlib.contextmanager
def registry_lock(registry: str | os.PathLike) -> Iterator[Path | str]:
    """Hold ``<registry>/.retrain.lock`` (created exclusively) for the duration of the block;
    yields the lock's path (its URL in a remote registry).

    A lock left by a process that died on this host is taken over; a live holder, or one on
    another host, makes this raise :class:`RegistryError` naming it. See the module docstring
    for how exclusive the create is on each kind of storage.
    """
    url = os.fspath(registry)
    local = _io.local_path(url)
    if local is not None:
        Path(local).mkdir(parents=True, exist_ok=True)
    lock = _io.join(url, ".retrain.lock")
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": dt.datetime.now(dt.UTC).isoformat()}
    for _ in range(2):
        if _create(lock, json.dumps(me).encode()):
            break
        try:
            holder = json.loads(_io.read_bytes(lock) or b"{}")
        except (OSError, ValueError):  # gone meanwhile, or still being written
            holder = {}
        if holder.get("host") == me["host"] and holder.get("pid") and not _pid_alive(int(holder["pid"])):
            logger.warning("taking over the retrain lock of dead process %s", holder["pid"])
            _io.remove(lock)
            continue
        raise RegistryError(
            f"registry {url!r} is locked by another retrain (pid {holder.get('pid')} on "
            f"{holder.get('host')} since {holder.get('since')}); {lock} is removed when it ends "
            "(delete it by hand only if that retrain is gone)"
        )
    else:  # pragma: no cover - the second attempt either succeeds or raises above
        raise RegistryError(f"cannot lock registry {url!r}")
    try:
        yield Path(local, ".retrain.lock") if local is not None else lock
    finally:
        with storage_failures(lock, "remove the retrain lock"):
            _io.remove(lock)


def read_champion(registry: str | os.PathLike) -> dict[str, Any] | None:
    """The registry's ``champion.json`` (version, metric, score, hold-out), or None."""
    return _read_json(_io.join(os.fspath(registry), "champion.json"))


def holdout_cases(
    registry: str, frame: pd.DataFrame, target: str, group: str, task: str, fraction: float, seed: int
) -> tuple[set[str], str]:
    """The registry's hold-out case ids (drawn on first use, then fixed) and their version."""
    path = _io.join(registry, "holdout.json")
    data = _read_json(path)
    if data is not None:
        return set(data["case_ids"]), data["version"]
    per_group = frame.groupby(group).agg(target=(target, "first"), cases=("case_id", list))
    rng = np.random.default_rng(seed)
    chosen: list[str] = []
    strata = per_group.groupby("target") if task == "binary" else [(None, per_group)]
    for _, part in strata:
        order = rng.permutation(len(part))
        take = max(1, round(fraction * len(part)))
        for i in order[:take]:
            chosen.extend(part.iloc[i]["cases"])
    ids = sorted(set(map(str, chosen)))
    version = hashlib.sha256("\n".join(ids).encode()).hexdigest()[:12]
    _write_json(
        path,
        {
            "version": version,
            "case_ids": ids,
            "fraction": fraction,
            "seed": seed,
            "created_at": dt.datetime.now(dt.UTC).isoformat(),
        },
    )
    return set(ids), version


def promote(registry: str, version: str, *, metric: str, score: float, holdout: str) -> None:
    """Make ``version`` the registry's champion (``champion.json`` replaced in one step)."""
    _write_json(
        _io.join(registry, "champion.json"),
        {
            "version": version,
            "metric": metric,
            "score": score,
            "holdout": holdout,
            "promoted_at": dt.datetime.now(dt.UTC).isoformat(),
        },
    )


def record_decision(registry: str, decision: dict[str, Any]) -> None:
    """Keep a retrain's decision (promoted or not, and why) under ``decisions/<time>.json``."""
    now = dt.datetime.now(dt.UTC)
    _write_json(
        _io.join(registry, f"decisions/{now.strftime('%Y%m%dT%H%M%S%fZ')}.json"),
        {**decision, "decided_at": now.isoformat()},
    )
