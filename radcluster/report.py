"""The self-contained HTML report of a model version (no Dask).

:func:`render_report` reads only the version folder's files (metrics, out-of-fold and test
predictions, PCA scores and variance, importances, config) and returns one HTML page whose
plots are base64 PNGs drawn with matplotlib's Agg backend: ROC per fold and mean, precision-
recall, calibration, confusion matrix, PCA scree and score plot, top features. Plots that do
not apply to the task (ROC for a regression) are replaced by ones that do (predicted vs
observed, Kaplan-Meier by risk group, cluster sizes).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import _io

__all__ = ["render_report", "write_report", "PLOTS"]

# Plot ids a binary-classification report holds (tests check them).
PLOTS = ("roc", "pr", "calibration", "confusion", "scree", "pca_scores", "importance")

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;
color:#222;padding:0 1em}h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}
th{background:#f4f4f4}.grid{display:flex;flex-wrap:wrap;gap:1em}figure{margin:0;flex:1 1 480px}
figure img{width:100%;max-width:520px}figcaption{font-size:.9em;color:#555}pre{background:#f7f7f7;
padding:.8em;overflow-x:auto;font-size:.85em}.muted{color:#777}
"""


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(plot_id: str, caption: str, draw) -> str:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 4.2))
    try:
        draw(ax)
    except Exception as err:  # a plot that cannot be drawn says why instead of breaking the report
        ax.clear()
        ax.text(0.5, 0.5, f"not available:\n{err}", ha="center", va="center", wrap=True)
        ax.set_axis_off()
    return (
        f'<figure id="{plot_id}"><img alt="{html.escape(caption)}" '
        f'src="data:image/png;base64,{_png(fig)}"><figcaption>{html.escape(caption)}</figcaption></figure>'
    )


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return "–" if not math.isfinite(value) else f"{value:.3f}"
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, float | int | None) for v in value):
        if None in value:
            return "–"
        return f"{value[0]:.3f} – {value[1]:.3f}"
    return html.escape(str(value))


_SCALARS = (
    "n",
    "events",
    "roc_auc",
    "roc_auc_ci",
    "balanced_accuracy",
    "f1",
    "brier",
    "r2",
    "r2_ci",
    "mae",
    "rmse",
    "c_index",
    "c_index_ci",
    "silhouette",
    "adjusted_rand",
)


def _metrics_table(metrics: dict[str, Any]) -> str:
    parts = [p for p in ("cv", "test", "train") if metrics.get(p)]
    if not parts:
        return "<p class='muted'>no evaluation recorded</p>"
    keys = [k for k in _SCALARS if any(k in metrics[p] for p in parts)]
    titles = {"cv": "cross-validation (out of fold)", "test": "held-out test", "train": "training rows"}
    head = "".join(f"<th>{titles[p]}</th>" for p in parts)
    rows = []
    for k in keys:
        label = k.replace("_ci", " 95% CI").replace("_", " ")
        rows.append(
            f"<tr><th>{html.escape(label)}</th>"
            + "".join(f"<td>{_fmt(metrics[p].get(k))}</td>" for p in parts)
            + "</tr>"
        )
    cal = (metrics.get("cv") or metrics.get("test") or {}).get("calibration")
    if cal:
        rows.append(
            f"<tr><th>calibration slope / intercept</th><td colspan='{len(parts)}'>"
            f"{_fmt(cal.get('slope'))} / {_fmt(cal.get('intercept'))}</td></tr>"
        )
    folds = metrics.get("folds") or []
    main = metrics.get("main_metric")
    fold_txt = ""
    if folds and main:
        vals = ", ".join(_fmt(f.get(main)) for f in folds)
        fold_txt = f"<p>{html.escape(main)} per fold: {vals}</p>"
    return f"<table><tr><th></th>{head}</tr>{''.join(rows)}</table>{fold_txt}"


# --- plots -----------------------------------------------------------------------------------
def _roc(ax, preds: pd.DataFrame) -> None:
    from sklearn.metrics import auc, roc_curve

    cv = preds[preds["split"] == "cv"]
    grid = np.linspace(0, 1, 101)
    tprs = []
    for fold, part in cv.groupby("fold"):
        if part["y"].nunique() < 2:
            continue
        fpr, tpr, _ = roc_curve(part["y"], part["p"])
        ax.plot(fpr, tpr, lw=1, alpha=0.45, label=f"fold {fold} (AUC {auc(fpr, tpr):.2f})")
        tprs.append(np.interp(grid, fpr, tpr, left=0))
    if tprs:
        mean, sd = np.mean(tprs, axis=0), np.std(tprs, axis=0)
        mean[-1] = 1.0
        ax.plot(grid, mean, color="k", lw=2, label=f"mean of folds (AUC {auc(grid, mean):.2f})")
        ax.fill_between(grid, np.clip(mean - sd, 0, 1), np.clip(mean + sd, 0, 1), color="grey", alpha=0.2)
    test = preds[preds["split"] == "test"]
    if len(test) and test["y"].nunique() == 2:
        fpr, tpr, _ = roc_curve(test["y"], test["p"])
        ax.plot(fpr, tpr, color="tab:red", lw=2, label=f"held-out test (AUC {auc(fpr, tpr):.2f})")
    if not tprs and not len(test):
        raise ValueError("no evaluated predictions")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
    ax.legend(fontsize=7, loc="lower right")


def _pr(ax, preds: pd.DataFrame) -> None:
    from sklearn.metrics import average_precision_score, precision_recall_curve

    for split, color in (("cv", "k"), ("test", "tab:red")):
        part = preds[preds["split"] == split]
        if len(part) and part["y"].nunique() == 2:
            prec, rec, _ = precision_recall_curve(part["y"], part["p"])
            ap = average_precision_score(part["y"], part["p"])
            ax.plot(rec, prec, color=color, label=f"{'out of fold' if split == 'cv' else 'test'} (AP {ap:.2f})")
            ax.axhline(part["y"].mean(), ls="--", color=color, lw=0.8, alpha=0.6)
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall", xlim=(0, 1), ylim=(0, 1.02))
    ax.legend(fontsize=8)


def _calibration(ax, preds: pd.DataFrame, bins: int) -> None:
    from sklearn.calibration import calibration_curve

    for split, color in (("cv", "k"), ("test", "tab:red")):
        part = preds[preds["split"] == split]
        if len(part) and part["y"].nunique() == 2:
            frac, mean = calibration_curve(
                part["y"], part["p"], n_bins=max(2, min(bins, len(part) // 5 or 2)), strategy="quantile"
            )
            ax.plot(mean, frac, marker="o", color=color, label="out of fold" if split == "cv" else "test")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
    ax.set(
        xlabel="mean predicted probability",
        ylabel="observed fraction positive",
        title="Calibration",
        xlim=(0, 1),
        ylim=(0, 1),
    )
    ax.legend(fontsize=8)


def _confusion(ax, matrix: list[list[int]], classes: list[str]) -> None:
    m = np.asarray(matrix)
    ax.imshow(m, cmap="Blues")
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, str(m[i, j]), ha="center", va="center", color="white" if m[i, j] > m.max() / 2 else "black")
    ax.set_xticks(range(len(classes)), classes)
    ax.set_yticks(range(len(classes)), classes)
    ax.set(xlabel="predicted", ylabel="true", title="Confusion matrix (out of fold)")


def _scree(ax, ratio: np.ndarray, used: int | None, threshold: Any) -> None:
    k = np.arange(1, ratio.size + 1)
    ax.bar(k, ratio, color="tab:blue", label="explained variance ratio")
    ax2 = ax.twinx()
    ax2.plot(k, np.cumsum(ratio), color="k", marker=".", label="cumulative")
    ax2.set_ylim(0, 1.02)
    ax2.set_ylabel("cumulative")
    if isinstance(threshold, float):
        ax2.axhline(threshold, ls="--", color="tab:red", lw=1)
    if used:
        ax.axvline(used + 0.5, ls=":", color="tab:red")
    ax.set(xlabel="component", ylabel="explained variance ratio", title=f"PCA scree ({used} component(s) used)")


def _pca_scores(ax, scores: pd.DataFrame) -> None:
    if len(scores) > 5000:  # a readable (and quick) plot: a fixed random sample of the rows
        scores = scores.sample(5000, random_state=0)
    if "PC2" not in scores:
        scores = scores.assign(PC2=0.0)
    if "target" in scores and scores["target"].nunique() <= 10:
        for value, part in scores.groupby("target"):
            ax.scatter(part["PC1"], part["PC2"], s=14, alpha=0.75, label=str(value))
        ax.legend(title="target", fontsize=8)
    elif "target" in scores:
        sc = ax.scatter(scores["PC1"], scores["PC2"], c=scores["target"], s=14, cmap="viridis")
        ax.figure.colorbar(sc, ax=ax, label="target")
    else:
        ax.scatter(scores["PC1"], scores["PC2"], s=14)
    ax.set(xlabel="PC1", ylabel="PC2", title="First two PCA scores (training rows)")
    ax.axhline(0, color="grey", lw=0.5)
    ax.axvline(0, color="grey", lw=0.5)


def _importance(ax, items: list[list[Any]], title: str) -> None:
    items = [it for it in items if it[1] > 0][:20][::-1]
    if not items:
        raise ValueError("no importances recorded")
    ax.barh([str(n)[:48] for n, _ in items], [v for _, v in items], color="tab:green")
    ax.tick_params(axis="y", labelsize=6)
    ax.set(xlabel="relative importance", title=title)


def _observed(ax, preds: pd.DataFrame) -> None:
    for split, color in (("cv", "k"), ("test", "tab:red")):
        part = preds[preds["split"] == split]
        if len(part):
            ax.scatter(part["target"], part["predicted"], s=12, alpha=0.7, color=color, label=split)
    lo, hi = preds["target"].min(), preds["target"].max()
    ax.plot([lo, hi], [lo, hi], ls="--", color="grey")
    ax.set(xlabel="observed", ylabel="predicted", title="Predicted vs observed")
    ax.legend(fontsize=8)


def _kaplan_meier(ax, preds: pd.DataFrame) -> None:
    part = preds[preds["split"].isin(["cv", "test"])].dropna(subset=["risk"])
    high = part["risk"] > part["risk"].median()
    for name, sel, color in (("low risk", ~high, "tab:blue"), ("high risk", high, "tab:red")):
        t = part.loc[sel, "target"].to_numpy()
        e = part.loc[sel, "event"].to_numpy()
        times = np.unique(t[e == 1])
        surv, s = [1.0], 1.0
        for ti in times:
            at_risk = (t >= ti).sum()
            s *= 1 - ((t == ti) & (e == 1)).sum() / at_risk
            surv.append(s)
        ax.step(np.concatenate([[0], times]), surv, where="post", color=color, label=f"{name} (n={sel.sum()})")
    ax.set(xlabel="time", ylabel="survival", title="Kaplan-Meier by out-of-fold risk (median split)", ylim=(0, 1.02))
    ax.legend(fontsize=8)


def _clusters(ax, preds: pd.DataFrame) -> None:
    counts = preds["cluster"].value_counts().sort_index()
    ax.bar(counts.index.astype(str), counts.to_numpy(), color="tab:purple")
    ax.set(xlabel="cluster", ylabel="rows", title="Cluster sizes")


# --- the page --------------------------------------------------------------------------------
def _feature_kinds(kinds: dict[str, Any] | None) -> str:
    """'radiomics (107) + deep (4), as asked (features: [radiomics, deep])'; '' for older versions."""
    if not kinds:
        return ""
    counts = " + ".join(f"{k} ({n})" for k, n in kinds.get("counts", {}).items())
    selected = kinds.get("selected")
    how = "every feature in the store" if selected == "all" else f"features: [{', '.join(selected)}]"
    return f"{counts}; {how}"


def _load(folder: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ("metrics", "config", "importance", "features", "preprocess", "version"):
        path = folder / f"{name}.json"
        out[name] = json.loads(path.read_text()) if path.exists() else {}
    out["predictions"] = (
        pd.read_parquet(folder / "predictions.parquet") if (folder / "predictions.parquet").exists() else pd.DataFrame()
    )
    out["pca_scores"] = (
        pd.read_parquet(folder / "pca_scores.parquet") if (folder / "pca_scores.parquet").exists() else None
    )
    out["ratio"] = None
    if (folder / "preprocess.npz").exists():
        with np.load(folder / "preprocess.npz", allow_pickle=False) as data:
            if "explained_variance_ratio_" in data.files:
                out["ratio"] = data["explained_variance_ratio_"]
    return out


def _binary_preds(preds: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    y = (preds["target"].astype(str) == str(classes[1])).astype(int)
    return preds.assign(y=y, p=preds["probability"])


def render_report(version_dir: str | os.PathLike, *, meta: dict[str, Any] | None = None) -> str:
    """The report of the version in the local folder ``version_dir`` as one self-contained HTML string."""
    folder = Path(os.fspath(version_dir))
    d = _load(folder)
    meta = meta or d["version"]
    metrics, config = d["metrics"], d["config"]
    task = meta.get("task") or metrics.get("task")
    preds = d["predictions"]
    classes = meta.get("classes") or []
    figs: list[str] = []
    bins = (config.get("metrics") or {}).get("calibration_bins", 10)

    def scored(column: str) -> bool:
        # without cross-validation or a test split (folds: 0) no row has an out-of-sample score
        return column in preds.columns and bool(preds[column].notna().any())

    if task == "binary" and scored("probability"):
        bp = _binary_preds(preds, classes)
        figs.append(
            _figure(
                "roc",
                "ROC curve of each cross-validation fold, their mean (±1 sd) and the held-out test set",
                lambda ax: _roc(ax, bp),
            )
        )
        figs.append(_figure("pr", "Precision-recall (dashed: prevalence)", lambda ax: _pr(ax, bp)))
        figs.append(_figure("calibration", "Calibration (quantile bins)", lambda ax: _calibration(ax, bp, bins)))
    block = metrics.get("cv") or metrics.get("test") or {}
    if task in ("binary", "multiclass") and "confusion_matrix" in block:
        figs.append(
            _figure(
                "confusion",
                "Confusion matrix at the 0.5 threshold / argmax",
                lambda ax: _confusion(ax, block["confusion_matrix"], classes),
            )
        )
    if task == "regression" and scored("predicted"):
        figs.append(_figure("observed", "Predicted vs observed", lambda ax: _observed(ax, preds)))
    if task == "survival" and scored("risk"):
        figs.append(
            _figure("km", "Kaplan-Meier curves of the low- and high-risk halves", lambda ax: _kaplan_meier(ax, preds))
        )
    if task == "clustering" and scored("cluster"):
        figs.append(_figure("clusters", "Cluster sizes", lambda ax: _clusters(ax, preds)))
    pca_cfg = (config.get("preprocess") or {}).get("pca")
    if d["ratio"] is not None:
        used = (d["preprocess"] or {}).get("n_components")
        figs.append(
            _figure(
                "scree",
                "Explained variance of the fitted PCA components",
                lambda ax: _scree(ax, d["ratio"], used, pca_cfg),
            )
        )
    if d["pca_scores"] is not None:
        figs.append(
            _figure(
                "pca_scores", "First two PCA scores, coloured by target", lambda ax: _pca_scores(ax, d["pca_scores"])
            )
        )
    imp = d["importance"] or {}
    if imp.get("features"):
        how = "importance-weighted |PCA loadings|" if imp.get("via_pca") else "model importance"
        figs.append(
            _figure(
                "importance", f"Top input features ({how})", lambda ax: _importance(ax, imp["features"], "Top features")
            )
        )
    if imp.get("via_pca") and imp.get("model_inputs"):
        figs.append(
            _figure(
                "importance_inputs",
                "Importance of the model's inputs (PCA components)",
                lambda ax: _importance(ax, imp["model_inputs"], "Model inputs"),
            )
        )

    name = html.escape(meta.get("version", folder.name))
    pre = meta.get("preprocessing") or {}
    facts = [
        ("model", meta.get("model")),
        ("task", task),
        ("target", meta.get("target")),
        ("store", meta.get("store")),
        ("rows / cases", f"{meta.get('n_rows')} / {meta.get('n_cases')}"),
        ("left out (missing target)", metrics.get("left_out")),
        ("input features", meta.get("n_input_features")),
        ("feature kinds", _feature_kinds(meta.get("feature_kinds"))),
        ("model inputs", meta.get("n_model_inputs")),
        ("ComBat harmonisation", f"by {pre['combat']!r}" if pre.get("combat") else "not applied"),
        ("features dropped", ", ".join(f"{k}: {v}" for k, v in (pre.get("dropped") or {}).items())),
        ("config hash", meta.get("config_hash")),
        ("created", meta.get("created_at")),
    ]
    fact_rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in facts)
    versions = ", ".join(f"{k} {v}" for k, v in (meta.get("versions") or {}).items())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>radcluster model {name}</title>
<style>{_CSS}</style></head><body>
<h1>Model {name}</h1>
<table>{fact_rows}</table>
<h2>Metrics</h2>
{_metrics_table(metrics)}
<h2>Plots</h2>
<div class="grid">{"".join(figs)}</div>
<h2>Configuration</h2>
<pre>{html.escape(json.dumps(config, indent=2), quote=False)}</pre>
<p class="muted">{html.escape(versions)}</p>
</body></html>
"""


def write_report(
    version_dir: str | os.PathLike, out: str | os.PathLike | None = None, *, meta: dict[str, Any] | None = None
) -> Path | str:
    """Render the report of ``version_dir`` to ``out`` (default ``<version_dir>/report.html``).

    Either may be a URL: a remote version is read from a temporary download, and the report
    replaces ``out`` in one step (a rename locally, one upload remotely). The report is
    derived from the version's files and is not part of its hashed content, so re-rendering
    it leaves the version intact.
    """
    from .registry.versions import fetched

    source = os.fspath(version_dir)
    target = os.fspath(out) if out is not None else _io.join(source, "report.html")
    with fetched(source) as folder:
        page = render_report(folder, meta=meta)
    _io.write_atomic(target, page.encode("utf-8"))
    return Path(target) if _io.local_path(target) == target else target
