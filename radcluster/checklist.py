"""The reporting checklist of a model version: what radcluster knows, and what only the authors do.

Radiomics studies are reported against CLEAR (the CheckList for EvaluAtion of Radiomics
research, Kocak et al. 2023) and, for prediction models, TRIPOD+AI (Collins et al. 2024).
:func:`checklist_items` answers the items the run itself documents (data, segmentation and
extraction settings, preprocessing, selection, model, validation, metrics with intervals,
the leak test) from the version's files, and lists the rest as open: study design, ethics,
eligibility, the reference standard, acquisition, who segmented and how, sample size,
external validation, clinical use, availability. Items are named by topic, not numbered: the
answers are meant to be pasted next to the checklist's own numbering.

:func:`checklist_markdown` is the supplement-ready Markdown (``checklist.md`` beside every
``report.html``); :func:`checklist_html` the same table in the report.
"""

from __future__ import annotations

import html
import json
import math
import os
from pathlib import Path
from typing import Any

from .learn.stability import describe

__all__ = ["checklist_items", "checklist_markdown", "checklist_html"]

OPEN = None  # an item only the authors can answer

_OPEN_ITEMS = [
    ("Study design", "Study type (retrospective / prospective), registration, and the clinical question"),
    ("Study design", "Ethics approval and consent"),
    ("Data", "Eligibility criteria, recruitment period and centres; flow of patients"),
    ("Data", "Reference standard / outcome definition and how it was ascertained (blinded to the features?)"),
    ("Imaging", "Acquisition protocol per site: scanner, reconstruction, contrast, slice thickness"),
    ("Segmentation", "Who segmented, how (manual, semi-automatic, which software), readers and their experience"),
    ("Segmentation", "Inter-/intra-reader variability of the segmentation"),
    ("Data", "Sample size justification"),
    ("Validation", "External validation on an independent cohort (beyond the leave-site-out below)"),
    ("Model", "Comparison with clinical variables or an existing model; added value"),
    ("Clinical use", "Intended use, and how the model would change decisions"),
    ("Open science", "Availability of data, code (radcluster version below) and the model"),
]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if math.isfinite(value) else "n/a"
    return str(value)


def _ci(block: dict[str, Any], key: str) -> str:
    value = block.get(key)
    if value is None:
        return "n/a"
    ci = block.get(f"{key}_ci") or [None, None]
    if None in ci or any(isinstance(c, float) and not math.isfinite(c) for c in ci):
        return _fmt(value)
    return f"{_fmt(value)} (95% CI {_fmt(ci[0])}-{_fmt(ci[1])}, patient bootstrap)"


def _read(folder: Path, name: str) -> dict[str, Any]:
    path = folder / name
    return json.loads(path.read_text()) if path.exists() else {}


def checklist_items(version_dir: str | os.PathLike, *, meta: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """``[{section, item, answer}]`` for the version in the local folder ``version_dir``;
    ``answer`` is None for the items only the authors can answer."""
    folder = Path(os.fspath(version_dir))
    meta = meta or _read(folder, "version.json")
    metrics = _read(folder, "metrics.json")
    config = _read(folder, "config.json")
    cases = _read(folder, "cases.json")
    task = meta.get("task") or metrics.get("task")
    main = metrics.get("main_metric")
    cv = metrics.get("cv") or {}
    items: list[tuple[str, str, Any]] = []

    def add(section: str, item: str, answer: Any) -> None:
        items.append((section, item, answer))

    # --- data
    n_rows, n_cases = meta.get("n_rows"), meta.get("n_cases")
    add("Data", "Cohort size used for modelling", f"{n_cases} case(s), {n_rows} row(s) (scans x labels)")
    block = cv or metrics.get("test") or {}
    if task == "survival":
        add(
            "Data",
            "Outcome: events and censoring",
            f"{block.get('events')} event(s) of {block.get('n')}; "
            f"time {meta.get('target')!r}, event {meta.get('event')!r}",
        )
    elif task in ("binary", "multiclass"):
        counts = dict(zip(block.get("classes") or [], block.get("class_counts") or [], strict=False))
        add("Data", "Outcome: class balance", f"{meta.get('target')!r}: {counts}")
    else:
        add("Data", "Outcome", repr(meta.get("target")))
    left = cases.get("left_out") or []
    reasons: dict[str, int] = {}
    for rec in left:
        reasons[rec.get("reason", "?")] = reasons.get(rec.get("reason", "?"), 0) + 1
    add("Data", "Rows left out and why", ", ".join(f"{v} ({k})" for k, v in reasons.items()) or "none")
    held = metrics.get("leave_out")
    if held:
        add(
            "Data",
            "Sites / centres",
            f"{len(held['sites'])} by {held['column']!r}: "
            + ", ".join(f"{s['site']} (n={s.get('n')})" for s in held["sites"]),
        )
    # --- segmentation & extraction
    ext = meta.get("extraction") or {}
    add(
        "Feature extraction",
        "Software and versions",
        ", ".join(
            f"{k} {v}"
            for k, v in (meta.get("versions") or {}).items()
            if k in ("radcluster", "sklearn", "xgboost", "sksurv")
        )
        + (f"; extraction: {', '.join(f'{k} {v}' for k, v in ext.get('versions', {}).items())}" if ext else ""),
    )
    add(
        "Feature extraction",
        "Extraction settings (pyradiomics params file)",
        f"params hash(es) {', '.join(meta.get('store_params_hashes') or []) or 'n/a'}"
        + (f"; settings {ext['settings']}" if ext.get("settings") else ""),
    )
    add(
        "Feature extraction",
        "IBSI compliance",
        ext.get("ibsi") or "pyradiomics' own preprocessing (not IBSI mode); see docs/ibsi-compliance.md",
    )
    add("Feature extraction", "Number of features extracted", meta.get("n_input_features"))
    # --- preprocessing, selection, model
    pre = config.get("preprocess") or {}
    add(
        "Preprocessing",
        "Missing values, constant features, scaling",
        f"impute {pre.get('impute')}; drop > {pre.get('max_missing_fraction')} missing, near-constant "
        f"(mode share >= {pre.get('max_mode_fraction')}); z-scores: {pre.get('scale')}; "
        "all fitted on training folds only",
    )
    add(
        "Preprocessing",
        "Harmonisation (batch effects)",
        f"ComBat by {pre['combat']!r}" if pre.get("combat") else "none",
    )
    add("Preprocessing", "Dimension reduction", f"PCA {pre.get('pca')}" if pre.get("pca") is not None else "none")
    sel = config.get("select") or {}
    stab = metrics.get("stability")
    add(
        "Feature selection",
        "Stability / reproducibility filter",
        describe(stab) if stab else "none",
    )
    method = sel.get("method", "none")
    add(
        "Feature selection",
        "Selection method (inside the folds)",
        "none"
        if method == "none" and not sel.get("cluster")
        else f"{method} (k={sel.get('k')}, q={sel.get('q')}), correlation clustering {sel.get('cluster')}",
    )
    add("Feature selection", "Number of features in the final model", meta.get("n_model_inputs"))
    add(
        "Model",
        "Algorithm and parameters",
        f"{meta.get('model')} {json.dumps((config.get('params') or {}).get(meta.get('model'), {}))} "
        "(defaults of the model otherwise)",
    )
    searched = metrics.get("search")
    add(
        "Model",
        "Hyperparameter tuning",
        f"{'grid' if (config.get('search') or {}).get('grid') else 'random'} search over "
        f"{len(searched['candidates'])} candidate(s) in {config['search']['inner_folds']} inner folds of each "
        f"training fold, scored on the outer folds only; final model: {json.dumps(searched['final']['params'])}"
        if searched
        else "none (the parameters above)",
    )
    # --- validation & metrics
    cvc = config.get("cv") or {}
    add(
        "Validation",
        "Internal validation scheme",
        f"{cvc.get('folds')}-fold cross-validation grouped by patient, stratified; held-out test share "
        f"{cvc.get('test_fraction')}; seed {cvc.get('seed')}",
    )
    add("Validation", "Validation on unseen sites", f"leave-one-{held['column']}-out" if held else "not run")
    if main:
        add("Performance", f"Discrimination ({main}), cross-validated", _ci(cv, main) if cv else "n/a")
        if metrics.get("test"):
            add("Performance", f"Discrimination ({main}), held-out test", _ci(metrics["test"], main))
        if held:
            add(
                "Performance",
                f"Discrimination ({main}) per held-out site",
                "; ".join(f"{s['site']}: {_ci(s, main)}" for s in held["sites"]),
            )
    if task == "binary" and cv:
        cal = cv.get("calibration") or {}
        add(
            "Performance",
            "Calibration",
            f"slope {_fmt(cal.get('slope'))}, intercept {_fmt(cal.get('intercept'))}; Brier {_ci(cv, 'brier')}",
        )
        add(
            "Performance",
            "Clinical utility",
            "decision curve in the report" if metrics.get("decision_curve") else "n/a",
        )
    if task == "survival" and cv:
        add(
            "Performance",
            "Survival metrics",
            f"Uno's C {_ci(cv, 'c_index_uno')}; integrated Brier {_ci(cv, 'ibs') if 'ibs' in cv else 'n/a'}",
        )
    add(
        "Validation",
        "Leak check (target permuted)",
        "this version was trained on a permuted target (a leak check)"
        if config.get("shuffle_target")
        else "not part of this version: train again with --shuffle-target; chance-level metrics expected",
    )
    add("Explainability", "Feature contributions", "per-row contributions / permutation importance in the report")
    out = [{"section": s, "item": i, "answer": None if a is None else str(a)} for s, i, a in items]
    out += [{"section": s, "item": i, "answer": OPEN} for s, i in _OPEN_ITEMS]
    return out


def checklist_markdown(version_dir: str | os.PathLike, *, meta: dict[str, Any] | None = None) -> str:
    """The checklist as a Markdown table (items radcluster cannot answer marked *open*)."""
    lines = ["| Section | Item | Answer |", "|---|---|---|"]
    for it in checklist_items(version_dir, meta=meta):
        answer = "*open: to be answered by the authors*" if it["answer"] is None else it["answer"].replace("|", "\\|")
        lines.append(f"| {it['section']} | {it['item']} | {answer} |")
    return "\n".join(lines) + "\n"


def checklist_html(version_dir: str | os.PathLike, *, meta: dict[str, Any] | None = None) -> str:
    """The checklist as an HTML table for the report."""
    rows = []
    for it in checklist_items(version_dir, meta=meta):
        answer = (
            "<em class='muted'>open: to be answered by the authors</em>"
            if it["answer"] is None
            else html.escape(it["answer"])
        )
        rows.append(
            f"<tr><td>{html.escape(it['section'])}</td><td>{html.escape(it['item'])}</td><td>{answer}</td></tr>"
        )
    return (
        "<p>Answered from this run; open items need the authors. Also written as <code>checklist.md</code> "
        "beside this report.</p><table id='checklist'><tr><th>section</th><th>item</th><th>answer</th></tr>"
        + "".join(rows)
        + "</table>"
    )
