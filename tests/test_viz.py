"""The viewer's packing, contours and orientation; the plotly bundle."""

import numpy as np
import pytest

from mstt_lib import viz


def _volumes(shape=(7, 5, 4)):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(2)]
    masks = [rng.random(shape) > 0.6, rng.random(shape) > 0.3]
    return images, masks


def test_encoded_volume_decodes_to_the_same_8_bit_voxels_and_masks():
    images, masks = _volumes()
    png, layout = viz.encode_volume(images, masks)
    decoded_images, decoded_masks = viz.decode_volume(png, layout)
    assert layout["shape"] == [7, 5, 4]
    for original, decoded in zip(images, decoded_images, strict=True):
        assert decoded.dtype == np.uint8
        np.testing.assert_array_equal(decoded, original)
    for original, decoded in zip(masks, decoded_masks, strict=True):
        np.testing.assert_array_equal(decoded, original)


def test_one_image_and_an_odd_slice_count_round_trip():
    images, masks = _volumes((3, 9, 5))
    png, layout = viz.encode_volume(images[:1], masks[:1])
    (image,), (mask,) = viz.decode_volume(png, layout)
    np.testing.assert_array_equal(image, images[0])
    np.testing.assert_array_equal(mask, masks[0])


def test_encode_refuses_float_images_and_mismatched_shapes():
    images, masks = _volumes()
    with pytest.raises(ValueError, match="uint8"):
        viz.encode_volume([images[0].astype(np.float32)])
    with pytest.raises(ValueError, match="shape"):
        viz.encode_volume(images, [np.zeros((7, 5, 3), bool)])
    with pytest.raises(ValueError, match="one or two"):
        viz.encode_volume(images + images[:1])


def test_mask_boundary_is_the_ring_of_pixels_touching_the_outside():
    mask = np.zeros((7, 7), bool)
    mask[1:6, 1:6] = True
    boundary = viz.mask_boundary(mask)
    expected = mask.copy()
    expected[2:5, 2:5] = False
    np.testing.assert_array_equal(boundary, expected)


def test_every_boundary_pixel_lies_on_the_mask_and_has_an_outside_neighbour():
    rng = np.random.default_rng(3)
    mask = rng.random((20, 20)) > 0.4
    boundary = viz.mask_boundary(mask)
    assert not np.any(boundary & ~mask)
    padded = np.pad(mask, 1)
    for y, x in zip(*np.nonzero(boundary), strict=True):
        neighbours = [padded[y, x + 1], padded[y + 2, x + 1], padded[y + 1, x], padded[y + 1, x + 2]]
        assert not all(neighbours)
    inner = mask & ~boundary
    for y, x in zip(*np.nonzero(inner), strict=True):
        assert padded[y, x + 1] and padded[y + 2, x + 1] and padded[y + 1, x] and padded[y + 1, x + 2]


def test_a_mask_at_the_image_edge_has_its_edge_pixels_on_the_contour():
    mask = np.ones((4, 4), bool)
    assert viz.mask_boundary(mask).sum() == 12


def test_canonical_reorients_an_lps_volume_to_ras_with_its_spacing():
    volume = np.arange(4 * 3 * 2, dtype=np.float32).reshape(4, 3, 2)
    affine = np.diag([-1.0, -2.0, 3.0, 1.0])
    case = {"images": {"T2": volume}, "mask": volume > 10, "affine": affine, "case_id": "X"}
    canonical = viz._canonical(case)
    np.testing.assert_array_equal(canonical["images"]["T2"], volume[::-1, ::-1, :])
    np.testing.assert_array_equal(canonical["mask"], (volume > 10)[::-1, ::-1, :])
    np.testing.assert_allclose(canonical["spacing"], [1, 2, 3])


def test_canonical_swaps_spacing_with_permuted_axes():
    volume = np.zeros((4, 3, 2), np.float32)
    affine = np.array([[0, 2.0, 0, 0], [1.0, 0, 0, 0], [0, 0, 3.0, 0], [0, 0, 0, 1]])  # axis 0 is A
    case = {"images": {"T1": volume}, "mask": volume, "affine": affine, "case_id": "X"}
    canonical = viz._canonical(case)
    assert canonical["images"]["T1"].shape == (3, 4, 2)
    np.testing.assert_allclose(canonical["spacing"], [2, 1, 3])


def test_slice_viewer_embeds_one_png_and_gets_a_unique_id():
    images, masks = _volumes()
    first = viz.slice_viewer({"T1": images[0], "T2": images[1]}, (1, 1, 3), {"ground truth": masks[0]}).data
    second = viz.slice_viewer({"T1": images[0]}, (1, 1, 3)).data
    assert first.count("data:image/png;base64,") == 1
    assert '"names": ["T1", "T2"]' in first and '"maskNames": ["ground truth"]' in first
    ids = [html.split('class="mstt-viewer" id="')[1].split('"')[0] for html in (first, second)]
    assert ids[0] != ids[1]


def test_float_images_are_normalised_to_the_full_8_bit_range():
    ramp = np.linspace(-5, 50, 7 * 5 * 4, dtype=np.float32).reshape(7, 5, 4)
    html = viz.slice_viewer({"T2": ramp}, (1, 1, 1)).data
    png = html.split("data:image/png;base64,")[1].split('"')[0]
    (image,), _ = viz.decode_volume(png, {"shape": [7, 5, 4], "columns": 2, "images": 1, "masks": 0})
    assert image.min() == 0 and image.max() == 255


def test_show_figure_sends_html_without_plotly_js_and_the_plotly_json(monkeypatch):
    import plotly.graph_objects as go

    shown = []
    monkeypatch.setattr("IPython.display.display", lambda bundle, raw: shown.append(bundle))
    viz.show_figure(go.Figure(go.Bar(x=[1, 2], y=[3, 4]), layout={"title": {"text": "t"}}))
    (bundle,) = shown
    assert "application/vnd.plotly.v1+json" in bundle
    assert "Plotly.newPlot" in bundle["text/html"]
    assert "cdn.plot.ly" not in bundle["text/html"] and len(bundle["text/html"]) < 50_000
