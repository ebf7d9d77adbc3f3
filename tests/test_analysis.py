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
    assert table.loc["a", "dice"] == pytest.approx(0.3) and table.loc["a", "n_cases"] == 2
    assert table.loc["all", "dice"] == pytest.approx(0.5) and table.loc["all", "n_scored"] == 3
    # Dice is never infinite: no columns that would call a tumour scored 0 "not missed"
    assert "n_missed" not in table and "misses" not in table
    alone = analysis.mean_table(results[results["model"] == "a"], ["model", "tissue"])
    assert alone["model"].tolist() == ["a"]  # one group: no "all" row repeating it


def test_a_missed_tumour_is_counted_not_hidden():
    # Model "a" misses one tumour (HD95 inf); one case has no tumour at all (NaN).
    results = pd.DataFrame({"model": ["a", "a", "a", "b"], "hd95_mm": [2.0, 4.0, np.inf, np.nan]})
    table = analysis.mean_table(results, ["model"], "hd95_mm").set_index("model")
    row = table.loc["a"]
    assert (row["n_cases"], row["n_scored"], row["n_missed"]) == (3, 2, 1)
    assert row["hd95_mm"] == pytest.approx(3.0) and row["misses"] == "left out of the mean"
    assert (table.loc["b", "n_scored"], table.loc["b", "n_missed"]) == (0, 0)
    assert (table.loc["all", "n_cases"], table.loc["all", "n_missed"]) == (4, 1)
    penalised = analysis.mean_table(results, ["model"], "hd95_mm", misses=100.0).set_index("model")
    assert penalised.loc["a", "hd95_mm"] == pytest.approx(106 / 3)
    assert penalised.loc["a", "n_scored"] == 3 and penalised.loc["a", "misses"] == "counted as 100"


def test_bootstrap_counts_a_miss_at_the_penalty_given():
    assert analysis.bootstrap_ci([1.0, np.inf], misses=3.0)[0] == pytest.approx(2.0)
    assert analysis.count_values([1.0, np.inf, -np.inf, np.nan]) == {
        "n_cases": 4,
        "n_scored": 1,
        "n_missed": 2,
    }


def test_summary_table_one_row_per_metric():
    results = pd.DataFrame({"dice": [0.0, 0.8], "hd95_mm": [np.inf, 5.0]})
    table = analysis.summary_table(results, ["dice", "hd95_mm"], misses={"hd95_mm": 50.0})
    assert table.loc["dice", "mean"] == pytest.approx(0.4) and table.loc["dice", "n_missed"] == 0
    assert table.loc["hd95_mm", "mean"] == pytest.approx(27.5) and table.loc["hd95_mm", "n_missed"] == 1
    assert analysis.summary_table(results, ["hd95_mm"]).loc["hd95_mm", "n_scored"] == 1


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


def test_trend_table_gives_each_tissues_direction_over_log_volume():
    volumes = np.array([1.0, 10.0, 100.0, 1000.0])
    frame = pd.DataFrame(
        {
            "tissue": ["Fibrous"] * 4 + ["Fat"] * 4 + ["Nerve"],
            "volume_ml": [*volumes, *volumes, 5.0],
            "dice": [0.2, 0.4, 0.6, 0.8, 0.9, 0.8, 0.7, 0.6, 0.5],
        }
    )
    table = analysis.trend_table(frame, "volume_ml", log_x=True)
    assert list(table.index) == ["Fibrous", "Fat", "Nerve"]
    # linear in log10 volume: slope 0.2 per decade, a perfect fit
    fibrous = table.loc["Fibrous"]
    assert fibrous["slope"] == pytest.approx(0.2) and fibrous["r2"] == pytest.approx(1)
    assert list(table["direction"]) == ["rises", "falls", "no line"] and table.loc["Nerve", "n"] == 1
    # on a linear axis the same Fibrous points are not a line
    assert analysis.trend_table(frame, "volume_ml").loc["Fibrous", "r2"] < 1


def test_paired_comparison_finds_a_consistent_difference():
    cases = [f"C{i}" for i in range(12)]
    a = pd.DataFrame({"case_id": cases, "model": "unet", "dice": np.linspace(0.5, 0.9, 12)})
    b = a.assign(model="litemedsam", dice=a["dice"] - 0.1 - np.linspace(0, 0.02, 12))
    result = analysis.paired_comparison(pd.concat([a, b]), "unet", "litemedsam")
    assert result["n"] == 12 and result["median_difference"] > 0.1 and result["p_value"] < 0.01
    assert np.isnan(analysis.paired_comparison(a, "unet", "litemedsam")["p_value"])


def test_tumour_statistics_in_two_processes_equal_one_and_match_the_truth(phantom_dir):
    from mstt_lib.cohort import read_cases
    from mstt_lib.phantom import TRUTH_FILE

    cases, _ = read_cases(phantom_dir)
    serial = analysis.tumour_statistics(cases, progress=False)
    parallel = analysis.tumour_statistics(cases, progress=False, workers=2)
    pd.testing.assert_frame_equal(serial, parallel)
    assert list(serial["case_id"]) == list(cases["case_id"])  # the cases' order is kept
    truth = pd.read_csv(phantom_dir / TRUTH_FILE).set_index("case_id")
    volumes = serial.set_index("case_id")["volume_ml"]
    np.testing.assert_allclose(volumes, truth.loc[volumes.index, "tumour_volume_ml"], rtol=1e-6)
    assert serial[["mean_t1", "mean_t2"]].apply(lambda v: v.between(0, 1)).all().all()


def test_a_mean_reads_as_a_phrase_with_its_interval_and_cases():
    results = pd.DataFrame({"model": ["unet"] * 4, "dice": [0.5, 0.7, 0.9, np.nan]})
    row = analysis.mean_table(results, ["model"]).iloc[0]
    low, high = row["ci_low"], row["ci_high"]
    assert analysis.mean_with_interval(row) == f"0.700 (95 % CI {low:.3f}-{high:.3f}, 3 cases)"
    assert low < 0.7 < high
