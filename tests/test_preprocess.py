"""The paper's intensity normalisation."""

import numpy as np
import pytest

from mstt_lib.preprocess import clip_percentiles, minmax_normalise, normalise_intensity


def test_clip_percentiles_on_a_ramp_with_known_percentiles():
    ramp = np.arange(10001, dtype=np.float64)  # the p-th percentile is 100 * p
    clipped = clip_percentiles(ramp, 0.05, 99.95)
    assert clipped.min() == pytest.approx(5.0)
    assert clipped.max() == pytest.approx(9995.0)
    np.testing.assert_array_equal(clipped[5:9996], ramp[5:9996])


def test_clip_percentiles_removes_a_single_outlier():
    image = np.concatenate([np.zeros(9999), [1e6]])
    assert clip_percentiles(image).max() < 1e6


def test_clip_percentiles_rejects_fractions_in_the_wrong_order():
    with pytest.raises(ValueError, match="percentiles"):
        clip_percentiles(np.zeros(3), 99.0, 1.0)


def test_minmax_maps_to_unit_range_and_a_constant_image_to_zero():
    np.testing.assert_allclose(minmax_normalise(np.array([2.0, 4.0, 6.0])), [0, 0.5, 1])
    assert not minmax_normalise(np.full((2, 2), 7.0)).any()


def test_normalise_intensity_spans_zero_to_one():
    rng = np.random.default_rng(0)
    image = rng.normal(100, 20, size=(20, 20, 5))
    out = normalise_intensity(image)
    assert out.min() == 0 and out.max() == 1 and out.dtype == np.float32
