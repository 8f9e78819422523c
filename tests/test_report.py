"""The HTML report of a version: valid, self-contained, every plot present (and it renders)."""

from __future__ import annotations

import argparse
import base64
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from _stores import trained_as

from radcluster.cli.models import add_commands
from radcluster.registry.versions import open_version
from radcluster.report import PLOTS, render_report

CHROMIUM = Path("/usr/bin/chromium")
VOID = {"meta", "img", "br", "hr", "link", "input", "col", "source", "area", "base", "wbr"}


class _Checker(HTMLParser):
    """Collects figures and images, and checks that every non-void element is closed in order."""

    def __init__(self):
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.figures: list[str] = []
        self.images: list[str] = []
        self.external: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "figure":
            self.figures.append(attrs.get("id", ""))
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        for key in ("src", "href"):
            if attrs.get(key) and not attrs[key].startswith("data:"):
                self.external.append(attrs[key])
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
        else:
            self.stack.pop()


def check_html(text: str) -> _Checker:
    checker = _Checker()
    checker.feed(text)
    checker.close()
    assert not checker.errors, checker.errors[:5]
    assert not checker.stack, f"unclosed: {checker.stack}"
    assert not checker.external, f"external resources: {checker.external}"  # self-contained
    assert text.startswith("<!DOCTYPE html>")
    return checker


def _png_ok(src: str) -> bool:
    prefix = "data:image/png;base64,"
    return src.startswith(prefix) and base64.b64decode(src[len(prefix) :])[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def binary(tmp_path_factory, client):
    return trained_as(tmp_path_factory, client, "binary")


def test_binary_report_is_valid_html_with_every_plot(binary):
    _, result = binary
    text = (result.version / "report.html").read_text()
    checker = check_html(text)
    assert set(PLOTS) <= set(checker.figures), checker.figures
    assert len(checker.images) == len(checker.figures) and all(_png_ok(src) for src in checker.images)
    for needle in (
        "roc auc 95% CI",
        "held-out test",
        "balanced accuracy",
        "brier",
        "calibration slope",
        "ComBat harmonisation",
        "not applied",
        '"pca": 0.9',
        "config hash",
    ):
        assert needle in text, needle
    assert re.search(r"roc_auc per fold: ([01]\.\d{3}, ){2}[01]\.\d{3}", text)


def test_report_command_rewrites_without_touching_the_version(binary, tmp_path, capsys):
    _, result = binary
    copy = tmp_path / result.version.name
    shutil.copytree(result.version, copy)
    (copy / "report.html").unlink()
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["report", str(copy)])
    assert args.func(args) == 0
    assert f"wrote {copy / 'report.html'}" in capsys.readouterr().out
    assert (copy / "report.html").read_text() == (result.version / "report.html").read_text()
    open_version(copy)  # every hashed file is as trained


@pytest.mark.parametrize(
    "key, figure",
    [("regression", "observed"), ("survival", "km"), ("clustering", "clusters"), ("multiclass", "confusion")],
)
def test_reports_of_other_tasks(tmp_path_factory, client, key, figure):
    _, result = trained_as(tmp_path_factory, client, key)  # shared with test_learn
    checker = check_html(render_report(result.version))
    assert figure in checker.figures and "importance" in checker.figures
    assert "scree" in checker.figures and "pca_scores" in checker.figures
    assert all(_png_ok(src) for src in checker.images)


# Trainings whose reports hold the study sections: per-site metrics, contributions, the
# checklist, and the decision curve (binary) or Kaplan-Meier curves and a nested search (Cox).
STUDY = {
    "study_binary": {
        "target": "outcome",
        "model": "xgboost",
        "params": {"xgboost": {"n_estimators": 40}},
        "preprocess": {"pca": None},
        "validation": {"leave_out": "site"},
        "cv": {"folds": 3},
        "metrics": {"bootstrap": 50},
    },
    "study_survival": {
        "target": "survival_time",
        "event": "event",
        "model": "cox",
        "search": {"grid": {"alpha": [0.01, 1.0]}, "inner_folds": 2},
        "preprocess": {"pca": None},
        "validation": {"leave_out": "site"},
        "cv": {"folds": 3},
        "metrics": {"bootstrap": 50},
    },
}
# What each report must show once Chromium has laid it out: figures (by id) whose image decoded,
# and section headings.
SHOWN = {
    "binary": ({"roc", "calibration", "decision_curve", "contributions"}, ["Reporting checklist"]),
    "study_binary": (
        {"decision_curve", "contributions"},
        ["Leave-one-site-out validation", "Reporting checklist"],
    ),
    "study_survival": (
        {"km", "contributions"},
        ["Leave-one-site-out validation", "Survival metrics", "Hyperparameter search (nested)", "Reporting checklist"],
    ),
}
# Injected into a copy of the report: once the page has loaded, the body records which figures'
# images decoded (naturalWidth > 0) and which headings take up space, for --dump-dom to print.
_PROBE = """<script>window.addEventListener("load", () => {
  const shown = [...document.images].filter(i => i.complete && i.naturalWidth > 0 && i.offsetHeight > 0);
  document.body.dataset.figures = shown.map(i => i.closest("figure").id).join(",");
  const heads = [...document.querySelectorAll("h2")].filter(h => h.offsetHeight > 0);
  document.body.dataset.headings = heads.map(h => h.textContent).join("|");
});</script>"""


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium; the HTML checks above cover the report")
@pytest.mark.parametrize("key", list(SHOWN))
def test_report_renders_in_headless_chromium(tmp_path_factory, client, tmp_path, key):
    import matplotlib.image
    from _stores import trained

    if key in STUDY:
        _, result = trained(tmp_path_factory, client, key, STUDY[key], rows=120)
    else:
        _, result = trained_as(tmp_path_factory, client, key)
    page = (result.version / "report.html").read_text()
    probed = tmp_path / "probed.html"
    probed.write_text(page.replace("</body>", _PROBE + "</body>"))
    dom = _chromium(tmp_path, "--virtual-time-budget=10000", "--dump-dom", probed.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    figures = set(re.search(r'data-figures="([^"]*)"', dom.stdout).group(1).split(","))
    headings = re.search(r'data-headings="([^"]*)"', dom.stdout).group(1)
    want_figures, want_headings = SHOWN[key]
    assert want_figures <= figures, figures
    assert all(h in headings for h in want_headings), headings
    assert figures == set(check_html(page).figures)  # every figure of the page decoded and laid out

    shot = tmp_path / "shot.png"
    done = _chromium(
        tmp_path, f"--screenshot={shot}", "--window-size=1200,6000", (result.version / "report.html").as_uri()
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert shot.exists() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = matplotlib.image.imread(shot)[:, :, :3]
    ink = (pixels < 0.9).any(axis=2)  # not white
    assert pixels.shape[:2] == (6000, 1200)
    # non-blank: text, tables and plots mark a share of the page, and colour (the plots') is there
    assert 0.02 < ink.mean() < 0.9, ink.mean()
    assert (np.ptp(pixels, axis=2) > 0.3).mean() > 0.002  # saturated (coloured) pixels
    rows_inked = ink.any(axis=1)
    assert rows_inked[:3000].mean() > 0.3  # the first half of the page is not empty either


def test_report_without_any_out_of_sample_score(tmp_path_factory, client):
    """folds: 0 and no test split: the model is fitted on every row and nothing is scored out of
    sample, so the report has no ROC or confusion figure, but is still written."""
    from _stores import trained

    spec = {"target": "outcome", "model": "logistic_regression", "cv": {"folds": 0}, "metrics": {"bootstrap": 0}}
    _, result = trained(tmp_path_factory, client, "unscored", spec, rows=40)
    checker = check_html((result.version / "report.html").read_text())
    assert not {"roc", "pr", "calibration", "confusion"} & set(checker.figures)
    assert "importance" in checker.figures
