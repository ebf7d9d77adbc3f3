"""The result tables: Table 1 counts, bootstrap intervals, trend lines, the paired test."""

import numpy as np
import pandas as pd
import pytest

from mstt_lib import analysis


def test_site_tissue_counts_orders_sites_by_total_and_adds_totals():
    cases = pd.DataFrame({"site": ["leg", "thigh", "thigh", "arm"], "tissue": ["Fat", "Fat", "Nerve", None]})
    table = analysis.site_tissue_counts(cases)
    assert list(table.index) == ["thigh", "arm", "leg", "Total"]
    assert list(table.columns) == ["Fat", "Nerve", "Unknown", "Total"]
    assert table.loc["thigh", "Total"] == 2 and table.loc["Total", "Total"] == 4
    assert table.loc["arm", "Unknown"] == 1


def test_bootstrap_interval_contains_the_mean_and_narrows_with_more_data():
    rng = np.random.default_rng(0)
    small = analysis.bootstrap_ci(rng.normal(0.7, 0.1, 10))
    large = analysis.bootstrap_ci(rng.normal(0.7, 0.1, 1000))
    for mean, low, high in (small, large):
        assert low <= mean <= high
    assert (large[2] - large[1]) < (small[2] - small[1])
    assert large[0] == pytest.approx(0.7, abs=0.02)


def test_bootstrap_drops_nan_and_a_constant_gives_a_zero_width_interval():
    assert analysis.bootstrap_ci([0.5, np.nan, 0.5]) == (0.5, 0.5, 0.5)
    assert all(np.isnan(v) for v in analysis.bootstrap_ci([np.nan]))


def test_mean_table_gives_each_group_and_the_overall_mean():
    results = pd.DataFrame(
        {"model": ["a", "a", "b"], "tissue": ["Fat", "Fat", "Fat"], "dice": [0.2, 0.4, 0.9]}
    )
    table = analysis.mean_table(results, ["model"]).set_index("model")
    assert table.loc["a", "dice"] == pytest.approx(0.3) and table.loc["a", "n"] == 2
    assert table.loc["all", "dice"] == pytest.approx(0.5) and table.loc["all", "n"] == 3


def test_site_tissue_table_means_and_counts():
    results = pd.DataFrame(
        {"site": ["thigh", "thigh", "leg"], "tissue": ["Fat", "Nerve", "Fat"], "dice": [0.8, 0.4, 0.5]}
    )
    table = analysis.site_tissue_table(results)
    assert table.loc["thigh", "Fat"] == 0.8 and np.isnan(table.loc["leg", "Nerve"])
    assert table.loc["thigh", "count"] == 2 and table.loc["thigh", "mean dice"] == pytest.approx(0.6)


def test_trend_recovers_a_line_and_its_r2():
    x = np.arange(10.0)
    fit = analysis.trend(x, 2 * x + 1)
    assert (
        fit["slope"] == pytest.approx(2)
        and fit["intercept"] == pytest.approx(1)
        and fit["r2"] == pytest.approx(1)
    )
    noisy = analysis.trend(x, 2 * x + np.random.default_rng(0).normal(0, 5, 10))
    assert 0 < noisy["r2"] < 1
    assert np.isnan(analysis.trend([1.0], [2.0])["slope"])


def test_paired_comparison_finds_a_consistent_difference():
    cases = [f"C{i}" for i in range(12)]
    a = pd.DataFrame({"case_id": cases, "model": "unet", "dice": np.linspace(0.5, 0.9, 12)})
    b = a.assign(model="litemedsam", dice=a["dice"] - 0.1 - np.linspace(0, 0.02, 12))
    result = analysis.paired_comparison(pd.concat([a, b]), "unet", "litemedsam")
    assert result["n"] == 12 and result["median_difference"] > 0.1 and result["p_value"] < 0.01
    assert np.isnan(analysis.paired_comparison(a, "unet", "litemedsam")["p_value"])
