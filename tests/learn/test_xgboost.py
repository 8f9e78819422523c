"""XGBoost on the cluster: where its training and validation rows are placed."""

from __future__ import annotations

import dask.array as da
import numpy as np

from radcluster.learn.models.xgboost import _colocated


def _holders(client, arr) -> list[str]:
    """The worker holding each row block, found the way xgboost.dask finds its partitions."""
    from dask.core import flatten
    from distributed import wait

    arr = client.persist(arr)
    wait(arr)
    who = client.who_has(client.futures_of(arr))
    return [who[key][0] for key in flatten(arr.__dask_keys__())]


def test_every_training_worker_holds_rows_of_both_sets(client):
    """A worker holding one set only would train on an empty DMatrix of the other."""
    rng = np.random.default_rng(0)
    X, Xv = rng.normal(size=(90, 4)), rng.normal(size=(20, 4))
    y, yv = np.arange(90) % 2, np.arange(20) % 3
    Xp, yp, Xvp, yvp = _colocated(client, da.from_array(X, chunks=(30, 4)), y, da.from_array(Xv, chunks=(20, 4)), yv)
    w0, w1 = sorted(client.nthreads())
    assert _holders(client, Xp) == _holders(client, yp) == [w0, w1, w0]
    # the one validation block is cut in two, one beside each worker's training rows
    assert Xvp.chunks[0] == yvp.chunks[0] == (10, 10)
    assert _holders(client, Xvp) == _holders(client, yvp) == [w0, w1]
    assert np.array_equal(Xp.compute(), X) and np.array_equal(yp.compute(), y)
    assert np.array_equal(Xvp.compute(), Xv) and np.array_equal(yvp.compute(), yv)


def test_a_one_block_matrix_trains_on_one_worker(client):
    rng = np.random.default_rng(1)
    X = da.from_array(rng.normal(size=(40, 3)), chunks=(40, 3))
    Xv = da.from_array(rng.normal(size=(9, 3)))
    Xp, yp, Xvp, yvp = _colocated(client, X, np.arange(40) % 2, Xv, np.arange(9) % 2)
    [holder] = set(_holders(client, Xp) + _holders(client, yp) + _holders(client, Xvp) + _holders(client, yvp))
    assert holder in client.nthreads()
