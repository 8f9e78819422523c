"""Every registered model passes one conformance suite: fit, predict, save, load, refuse a modified file.

A model added as a module of radcluster/learn/models is picked up here by its registration.
"""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from radcluster.errors import RegistryError, SpecError
from radcluster.learn.models import TASKS, families, load_model, make_model, save_model
from radcluster.registry.versions import new_version, verify

# a model's own small settings, so the suite stays fast; defaults otherwise
_FAST = {"xgboost": {"n_estimators": 20}, "random_forest": {"n_estimators": 20}}


def _data(task: str, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(90, 4))
    signal = X[:, 0] + 0.5 * X[:, 1]
    if task == "binary":
        y = (signal > 0).astype(int)
    elif task == "multiclass":
        y = np.digitize(signal, [-0.5, 0.5])
    elif task == "regression":
        y = signal + rng.normal(scale=0.1, size=90)
    elif task == "survival":  # signed times: negative = censored (XGBoost's Cox convention)
        y = np.exp(-signal) * np.where(rng.random(90) < 0.7, 1, -1)
    else:
        y = None
    return da.from_array(X, chunks=(45, 4)), y


CASES = [(name, task) for name, family in families().items() for task in family.tasks]


def test_the_registry_is_complete():
    assert {"xgboost", "kmeans", "logistic_regression", "random_forest", "svm"} <= set(families())
    for name, family in families().items():
        assert family.tasks and set(family.tasks) <= set(TASKS), name
        assert family.description and family.format, name
        assert set(family.defaults) <= set(family.param_names(family.tasks[0])), name


@pytest.mark.parametrize(("name", "task"), CASES, ids=[f"{n}-{t}" for n, t in CASES])
def test_fit_predict_save_load(name, task, tmp_path, client):
    X, y = _data(task)
    model = make_model(name, task, _FAST.get(name), early_stopping_rounds=None)
    model.fit(X, y)
    scores = np.asarray(model.predict_scores(X).compute())
    assert len(scores) == 90 and np.isfinite(scores).all()
    if task in ("binary", "multiclass"):
        k = len(np.unique(y))
        assert scores.shape == (90, k) and np.allclose(scores.sum(axis=1), 1)
        assert (scores.argmax(axis=1) == y).mean() > 0.7  # it learned the signal
    elif task == "clustering":
        assert set(np.unique(scores)) <= set(range(families()[name].defaults.get("n_clusters", 8)))
    assert model.importances_.shape == (4,) and np.isfinite(model.importances_).all()

    with new_version(tmp_path / "registry", name) as version:
        meta = save_model(model, version.path, name=name, task=task)
    folder = version.location
    assert meta["format"] == families()[name].format
    verify(folder)
    again = load_model(folder)
    assert np.allclose(np.asarray(again.predict_scores(X).compute()), scores)

    # A modified model file is refused before any library parses it (XGBoost crashes the
    # process on a cut-short UBJSON file).
    saved = folder / meta["file"]
    saved.write_bytes(saved.read_bytes()[:-8])
    with pytest.raises(RegistryError, match="modified"):
        verify(folder)


def test_xgboost_trains_on_quantile_matrices(client, monkeypatch):
    # The memory of distributed training rests on this: xgboost.dask's estimator (tree_method
    # hist) bins the training rows into a DaskQuantileDMatrix, holding no float copy of them,
    # and bins the validation rows by the training's cuts (ref) instead of its own.
    import xgboost.dask as dxgb

    made = []
    init = dxgb.DaskQuantileDMatrix.__init__

    def spy(self, *args, **kwargs):
        init(self, *args, **kwargs)
        made.append((self, kwargs.get("ref")))

    monkeypatch.setattr(dxgb.DaskQuantileDMatrix, "__init__", spy)
    X, y = _data("binary")
    model = make_model("xgboost", "binary", _FAST["xgboost"], early_stopping_rounds=5)
    model.fit(X[:60], y[:60], eval_set=(X[60:], y[60:]))
    assert len(made) == 2
    (train, no_ref), (_, ref) = made
    assert no_ref is None and ref is train


def test_a_model_refuses_a_task_it_does_not_do():
    for name, family in families().items():
        other = next((t for t in TASKS if t not in family.tasks), None)
        if other is not None:
            with pytest.raises(SpecError, match=f"does not do task {other!r}"):
                make_model(name, other)
