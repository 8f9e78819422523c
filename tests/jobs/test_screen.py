"""``radcluster screen``: univariate Cox (or AUC) screening of every feature of a store."""

from __future__ import annotations

import pandas as pd
import pytest
from _stores import PLANTED_SURVIVAL, matrix_store, planted, survival_store

from radcluster.cli import main
from radcluster.errors import SpecError
from radcluster.jobs.screen import screen_store


@pytest.fixture(scope="module")
def planted_store(tmp_path_factory):
    X, columns = planted(120, 15, seed=4)
    return matrix_store(tmp_path_factory.mktemp("screen") / "store", X, columns)


def test_screen_command_survival_and_binary(planted_store, client, tmp_path, capsys):
    address = ["--scheduler-address", client.scheduler.address]
    out = tmp_path / "screen.parquet"
    code = main(["screen", str(planted_store), "--time", "survival_time", "--event", "event", "-o", str(out), *address])
    assert code == 0
    table = pd.read_parquet(out)
    # planted(): the hazard grows with F000 + F001; the last feature is constant
    assert set(table["feature"].iloc[:2]) == {"original_firstorder_F000", "original_firstorder_F001"}
    assert (table["hr"].iloc[:2] > 1.5).all() and (table["q"].iloc[:2] < 1e-4).all()
    assert table["hr"].isna().sum() == 1
    assert list(table.columns[:8]) == ["rank", "feature", "n", "hr", "hr_lo", "hr_hi", "p", "c_index"]
    page = out.with_suffix(".html").read_text()
    assert page.index("F000") < page.index("F005") and "<script" not in page and "http" not in page
    assert "original_firstorder_F000" in capsys.readouterr().out

    out = tmp_path / "binary.parquet"
    assert main(["screen", str(planted_store), "--target", "outcome", "-o", str(out), *address]) == 0
    binary = pd.read_parquet(out)
    assert set(binary["feature"].iloc[:5]) == {f"original_firstorder_F00{j}" for j in range(5)}
    assert (binary["auc"].iloc[:5] > 0.75).all() and binary.loc[5:, "q"].min() > 0.01


def test_screen_needs_time_and_event_or_a_target(planted_store):
    for kwargs in ({"time": "survival_time"}, {}, {"time": "survival_time", "event": "event", "target": "outcome"}):
        with pytest.raises(SpecError, match="--time and --event"):
            screen_store(str(planted_store), **kwargs)


@pytest.mark.slow  # extracts the 170-scan survival cohort (_stores.SURVIVAL_COHORT)
def test_screen_ranks_the_two_planted_survival_features_first(tmp_path_factory, client):
    store = survival_store(tmp_path_factory, client)
    table = screen_store(str(store), time="survival_time", event="event", client=client)
    assert table.attrs["n"] == 150  # the 20 retest scans are left out
    assert set(table["feature"].iloc[:2]) == set(PLANTED_SURVIVAL)
    assert (table["hr"].iloc[:2] > 1.8).all() and (table["q"].iloc[:2] < 1e-6).all()
    # the next feature is at least ten times less significant than the second planted one
    assert table["p"].iloc[2] > 10 * table["p"].iloc[1]
