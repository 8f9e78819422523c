"""Validation on unseen groups: leave one site (scanner, centre) out at a time.

Each value of the grouping column in turn is the test set; preprocessing (ComBat included),
selection and the model are fitted on the other sites only, exactly as a fold of
:func:`~.cv.cross_validate` is. The held-out site's metrics (with patient-bootstrap
intervals) say how the model transfers to a site it never saw.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import ModelError
from .cv import Target, cross_validate, evaluate

logger = logging.getLogger(__name__)

__all__ = ["leave_group_out"]


def leave_group_out(
    X,
    target: Target,
    groups: np.ndarray,
    sites: np.ndarray,
    *,
    make_pre: Callable[[], Any],
    make_mdl: Callable[[], Any],
    batch: np.ndarray | None = None,
    validation_fraction: float = 0.2,
    seed: int = 0,
    n_boot: int = 1000,
    metric_options: dict[str, Any] | None = None,
    search=None,
) -> tuple[dict[str, Any], np.ndarray]:
    """Every site in turn held out; returns ``(metrics, scores)``.

    ``metrics`` holds ``pooled`` (all held-out predictions together) and ``sites`` (one
    record per site: its metrics, ``site``, ``n_train``); ``scores`` the held-out prediction
    of every row.
    """
    sites = np.asarray(sites).astype(str)
    names = np.unique(sites)
    if names.size < 2:
        raise ModelError(f"validation.leave_out: {names.size} site(s) in the data; need at least 2")
    splits = [(np.flatnonzero(sites != s), np.flatnonzero(sites == s)) for s in names]
    opts = metric_options or {}
    result = cross_validate(
        X,
        target,
        groups,
        splits,
        make_pre=make_pre,
        make_mdl=make_mdl,
        batch=batch,
        validation_fraction=validation_fraction,
        seed=seed,
        metric_options=opts,
        search=search,
    )
    per_site = []
    for name, (train, test), fold in zip(names, splits, result.fold_metrics, strict=True):
        curves = None if result.survival is None else result.survival[test]
        m = evaluate(
            target.subset(test),
            result.scores[test],
            groups[test],
            n_boot=n_boot,
            survival=curves,
            grid=result.grid,
            **opts,
        )
        chosen = {"search": fold["search"]} if "search" in fold else {}  # train.search's choice for this site
        per_site.append({"site": str(name), "n_train": int(train.size), **m, **chosen})
        logger.info("site %s held out: %d test row(s), %d training row(s)", name, test.size, train.size)
    pooled = evaluate(target, result.scores, groups, n_boot=n_boot, survival=result.survival, grid=result.grid, **opts)
    return {"pooled": pooled, "sites": per_site}, result.scores
