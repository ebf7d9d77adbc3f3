"""The quality-control figures show every grid in the viewers' radiological orientation."""

from __future__ import annotations

import matplotlib
import numpy as np
import pandas as pd

from mstt_lib import qc
from mstt_lib.geometry import axis_aligned_affine, display_slice
from mstt_lib.io import save_nifti

matplotlib.use("Agg")

SHAPE = (12, 10, 6)


def _case(folder, name: str, axcodes: str, t2: np.ndarray, mask: np.ndarray) -> dict:
    """One registered pair stored on an RAS or an LPS grid of the same world box."""
    affine = axis_aligned_affine(SHAPE, (1.0, 1.0, 3.0), axcodes, (0.0, 0.0, 0.0))
    flip = (slice(None, None, -1), slice(None, None, -1), slice(None)) if axcodes == "LPS" else ()
    paths = {}
    for key, volume, dtype in (
        ("t2", t2, np.float32),
        ("t1", t2 * 0.5, np.float32),
        ("mask", mask, np.uint8),
    ):
        paths[key] = str(folder / f"{name}_{key}.nii.gz")
        save_nifti(volume[flip] if flip else volume, affine, paths[key], dtype=dtype)
    return {"case_id": name, "tissue": "Fat", **paths}


def test_checkerboards_of_an_lps_pair_match_its_ras_twin_and_are_radiological(tmp_path):
    rng = np.random.default_rng(0)
    t2 = rng.random(SHAPE).astype(np.float32)
    mask = np.zeros(SHAPE, np.uint8)
    mask[2:5, 6:9, 3] = 1  # the largest axial slice is 3; the tumour to the patient's left, anterior
    rows = [_case(tmp_path, "RAS_CASE", "RAS", t2, mask), _case(tmp_path, "LPS_CASE", "LPS", t2, mask)]
    table = pd.DataFrame(rows)
    figure = qc.registration_checkerboards(table, table, ["RAS_CASE", "LPS_CASE"], tile=4)
    panels = [axis.images[0].get_array() for axis in figure.axes]
    ras_before, ras_after, lps_before, lps_after = (np.asarray(p) for p in panels)
    np.testing.assert_allclose(lps_after, ras_after, atol=1e-6)
    np.testing.assert_allclose(lps_before, ras_before, atol=1e-6)
    # radiological: the RAS volume's axial slice reversed in both axes and transposed
    normalised = (t2 - np.percentile(t2, 0.05)) / (np.percentile(t2, 99.95) - np.percentile(t2, 0.05))
    expected = display_slice(np.clip(normalised, 0, 1), "axial", 3)
    tiles = (np.indices(expected.shape) // 4).sum(0) % 2 == 0  # the T2 tiles
    np.testing.assert_allclose(ras_after[tiles], expected[tiles], atol=1e-5)


def test_cache_spacings_are_measured_from_each_cases_grid_whatever_its_orientation():
    class Cache:
        case_ids = ["A", "B"]
        affines = {
            "A": axis_aligned_affine(SHAPE, (2.0, 2.0, 2.0), "LPS", (0.0, 0.0, 0.0)),
            "B": np.diag([1.0, 1.5, 3.0, 1.0]),
        }

        def meta(self, case_id):
            return {"affine": self.affines[case_id].tolist()}

    angle = np.deg2rad(30)  # a rotated grid keeps its spacing
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    Cache.affines["B"][:3, :3] = rotation @ Cache.affines["B"][:3, :3]
    spacings = qc.cache_spacings(Cache()).set_index("case_id")
    np.testing.assert_allclose(spacings.loc["A"], [2.0, 2.0, 2.0])
    np.testing.assert_allclose(spacings.loc["B"], [1.0, 1.5, 3.0])


def test_intensity_histograms_give_a_modality_one_colour_and_one_legend_entry_in_both_panels():
    rng = np.random.default_rng(0)
    raw = {"T1": rng.uniform(1, 900, 500), "T2": rng.uniform(1, 400, 500)}
    normalised = {name: values / values.max() for name, values in raw.items()}
    figure = qc.intensity_histograms(raw, normalised, bins=10)
    colours = {}
    for trace in figure.data:
        colours.setdefault(trace.name, set()).add(trace.marker.color)
    assert set(colours) == {"T1", "T2"}
    assert all(len(found) == 1 for found in colours.values()), colours  # the legend's colour in each panel
    assert colours["T1"] != colours["T2"]
    assert sorted(t.name for t in figure.data if t.showlegend is not False) == ["T1", "T2"]
