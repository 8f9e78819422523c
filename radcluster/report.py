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
from .checklist import checklist_html, checklist_markdown

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
    "balanced_accuracy_ci",
    "f1",
    "f1_ci",
    "brier",
    "brier_ci",
    "r2",
    "r2_ci",
    "mae",
    "mae_ci",
    "rmse",
    "rmse_ci",
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


def _kaplan_meier(ax, km: dict[str, Any]) -> None:
    colors = {"low": "tab:blue", "high": "tab:red"}
    for curve in km["curves"]:
        ax.step(
            curve["time"],
            curve["survival"],
            where="post",
            color=colors.get(curve["group"]),
            label=f"{curve['group']} risk (n={curve['n']}, {curve['events']} events)",
        )
    ax.set(
        xlabel="time",
        ylabel="survival",
        ylim=(0, 1.02),
        title=f"Kaplan-Meier by predicted risk (median split); log-rank p = {km['logrank_p']:.2g}",
    )
    ax.legend(fontsize=8)


def _decision_curve(ax, dc: dict[str, list[float]]) -> None:
    t = np.asarray(dc["threshold"])
    model = np.asarray(dc["model"])
    ax.plot(t, model, color="tab:blue", label="model")
    ax.plot(t, dc["treat_all"], color="grey", ls="--", label="treat all")
    ax.plot(t, dc["treat_none"], color="k", lw=0.8, label="treat none")
    top = max(float(np.nanmax(model)), float(dc["treat_all"][0]), 0.01)
    ax.set(
        xlabel="threshold probability",
        ylabel="net benefit",
        ylim=(-0.05, top * 1.1),
        xlim=(0, 1),
        title="Decision curve (out-of-sample predictions)",
    )
    ax.legend(fontsize=8)


def _contributions(ax, table: pd.DataFrame) -> None:
    values = table.drop(columns=[c for c in ("case_id", "bias") if c in table.columns])
    order = values.abs().mean().sort_values(ascending=False).index[:12][::-1]
    rng = np.random.default_rng(0)
    for i, name in enumerate(order):
        v = values[name].to_numpy()
        ax.scatter(v, i + rng.uniform(-0.25, 0.25, v.size), s=6, alpha=0.6, c=np.where(v >= 0, "tab:red", "tab:blue"))
    ax.set_yticks(range(len(order)), [str(n)[:48] for n in order], fontsize=6)
    ax.axvline(0, color="grey", lw=0.8)
    ax.set(xlabel="contribution to the model output (margin)", title="Per-row contributions (top inputs)")


def _permutation(ax, table: pd.DataFrame) -> None:
    top = table.sort_values("importance", ascending=False).head(15)[::-1]
    ax.barh([str(n)[:48] for n in top["feature"]], top["importance"], xerr=top["sd"], color="tab:green")
    ax.tick_params(axis="y", labelsize=6)
    ax.set(xlabel="drop of the main metric when permuted", title="Permutation importance")


def _icc_hist(ax, table: pd.DataFrame, icc_min: float) -> None:
    sources = table["source"] if "source" in table else pd.Series("retest", index=table.index)
    for source, color in (("retest", "tab:gray"), ("perturbation", "tab:blue")):
        values = table.loc[sources == source, "icc"].dropna().clip(-1, 1)
        if len(values):
            kind = "ICC(3,1), test-retest" if source == "retest" else "ICC(1,1), perturbations"
            ax.hist(values, bins=30, color=color, alpha=0.6, label=kind)
    ax.axvline(icc_min, color="tab:red", ls="--", label=f"icc_min {icc_min:g}")
    ax.set(xlabel="ICC", ylabel="features", title="Feature stability")
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
    for key, name in (
        ("contributions", "contributions"),
        ("permutation", "permutation_importance"),
        ("stability", "stability"),
    ):
        path = folder / f"{name}.parquet"
        out[key] = pd.read_parquet(path) if path.exists() else None
    out["model"] = json.loads((folder / "model.json").read_text()) if (folder / "model.json").exists() else {}
    out["ratio"] = None
    if (folder / "preprocess.npz").exists():
        with np.load(folder / "preprocess.npz", allow_pickle=False) as data:
            if "explained_variance_ratio_" in data.files:
                out["ratio"] = data["explained_variance_ratio_"]
    return out


def _table(head: list[str], rows: list[list[Any]]) -> str:
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><tr>{cells}</tr>{body}</table>"


def _study_sections(d: dict[str, Any], metrics: dict[str, Any]) -> str:
    """Leave-site-out, survival metrics, Cox coefficients, selection and stability."""
    out = []
    main = metrics.get("main_metric")
    held = metrics.get("leave_out")
    if held and main:
        rows = [[s["site"], s.get("n"), s.get("n_train"), s.get(main), s.get(f"{main}_ci")] for s in held["sites"]]
        pooled = held["pooled"]
        rows.append(["all held-out sites", pooled.get("n"), "", pooled.get(main), pooled.get(f"{main}_ci")])
        out.append(
            f"<h2>Leave-one-{html.escape(held['column'])}-out validation</h2>"
            "<p>Each site in turn is the test set; preprocessing (ComBat included), selection and the "
            "model are fitted on the other sites only.</p>"
            + _table([held["column"], "test rows", "training rows", main, "95% CI"], rows)
        )
    surv = metrics.get("cv") or metrics.get("test") or {}
    if metrics.get("task") == "survival" and "c_index_uno" in surv:
        keys = ["c_index", "c_index_uno", *(f"auc@{h:g}" for h in surv.get("horizons", [])), "ibs"]
        rows = [
            [k.replace("auc@", "time-dependent AUC at "), surv.get(k), surv.get(f"{k}_ci")] for k in keys if k in surv
        ]
        out.append("<h2>Survival metrics (scikit-survival)</h2>" + _table(["metric", "value", "95% CI"], rows))
    model = d.get("model") or {}
    if "hazard_ratio" in model:
        inputs = (d.get("features") or {}).get("model_inputs") or []
        rows = sorted(
            ([n, c, h] for n, c, h in zip(inputs, model["coef"], model["hazard_ratio"], strict=False) if c != 0),
            key=lambda r: -abs(r[1]),
        )
        alpha = f" (penalty alpha {model['alpha']:.3g}, chosen by inner cross-validation)" if model.get("alpha") else ""
        out.append(
            f"<h2>Cox coefficients{html.escape(alpha)}</h2><p>Hazard ratio per unit of each model input "
            "(per SD: inputs are standardised); zero coefficients omitted.</p>"
            + _table(["input", "coefficient", "hazard ratio"], rows[:40])
        )
    selection = metrics.get("selection")
    if selection:
        rows = [[f["feature"], f["folds"], f["share"]] for f in selection[:40]]
        out.append(
            "<h2>Feature selection across folds</h2><p>How often each feature reached the model; "
            "selection is fitted on each training fold only.</p>" + _table(["feature", "folds", "share"], rows)
        )
    searched = metrics.get("search")
    if searched and main:
        rows = [
            [f.get("fold"), json.dumps(f["search"]["params"]), f["search"]["inner_score"], f.get(main)]
            for f in metrics.get("folds") or []
            if f.get("search")
        ]
        rows.append(["final model", json.dumps(searched["final"]["params"]), searched["final"]["inner_score"], ""])
        out.append(
            f"<h2 id='search'>Hyperparameter search (nested)</h2><p>{len(searched['candidates'])} candidate(s), "
            "each scored by inner folds of a training fold; the chosen one is fitted on the whole training fold "
            f"and scored on its outer fold only.</p>"
            + _table(["outer fold", "chosen parameters", f"inner {main}", f"outer {main}"], rows)
        )
    stability = metrics.get("stability")
    if stability:
        from .learn.stability import describe

        dropped = ", ".join(stability["dropped"][:30]) + (" ..." if len(stability["dropped"]) > 30 else "")
        out.append(
            f"<h2>Stability</h2><p>{html.escape(describe(stability))}, before any fold: "
            f"{html.escape(dropped) or 'none'}.</p>"
        )
        table = d.get("stability")
        if table is not None and "source" in table:
            worst = table.sort_values("icc", na_position="last").head(20)
            rows = [[r.feature, r.source, r.icc, r.n, r.k] for r in worst.itertuples()]
            out.append(
                "<p>The least stable features (the whole table: stability.parquet):</p>"
                + _table(["feature", "source", "ICC", "scans", "measurements per scan"], rows)
            )
    return "".join(out)


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
    km = (metrics.get("cv") or metrics.get("test") or {}).get("km")
    if task == "survival" and km:
        figs.append(
            _figure("km", "Kaplan-Meier curves of the low- and high-risk halves", lambda ax: _kaplan_meier(ax, km))
        )
    if metrics.get("decision_curve"):
        figs.append(
            _figure(
                "decision_curve",
                "Net benefit against the threshold probability, with treat-all and treat-none",
                lambda ax: _decision_curve(ax, metrics["decision_curve"]),
            )
        )
    if d["contributions"] is not None:
        figs.append(
            _figure(
                "contributions",
                "Contributions of the top model inputs to each development row's output (red: raises it)",
                lambda ax: _contributions(ax, d["contributions"]),
            )
        )
    if d["permutation"] is not None:
        figs.append(_figure("contributions", "Permutation importance", lambda ax: _permutation(ax, d["permutation"])))
    if d["stability"] is not None:
        icc_min = (config.get("select") or {}).get("icc_min") or 0.75
        figs.append(
            _figure(
                "stability",
                "ICC of every feature over the test-retest pairs (ICC(3,1)) and perturbed copies (ICC(1,1))",
                lambda ax: _icc_hist(ax, d["stability"], icc_min),
            )
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
{_study_sections(d, metrics)}
<h2>Plots</h2>
<div class="grid">{"".join(figs)}</div>
<h2>Reporting checklist (CLEAR / TRIPOD+AI)</h2>
{checklist_html(folder, meta=meta)}
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
        checklist = checklist_markdown(folder, meta=meta)
    _io.write_atomic(target, page.encode("utf-8"))
    # the checklist for a paper's supplement, beside the report
    _io.write_atomic(_io.join(os.path.dirname(target) or ".", "checklist.md"), checklist.encode("utf-8"))
    return Path(target) if _io.local_path(target) == target else target
