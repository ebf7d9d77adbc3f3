"""The viewer's packing, contours and orientation; the plotly bundle."""

import numpy as np
import pytest
from browser_helpers import MISSING, chromium_found, headless_chromium

from mstt_lib import viz
from mstt_lib.geometry import PLANE_AXIS, PLANES, display_slice
from mstt_lib.preprocess import normalise_intensity
from mstt_lib.viz.codec import eight_bit, start_point


def _volumes(shape=(7, 5, 4)):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(2)]
    masks = [rng.random(shape) > 0.6, rng.random(shape) > 0.3]
    return images, masks


def test_encoded_volume_decodes_to_the_same_8_bit_voxels_and_masks():
    images, masks = _volumes()
    uris, layout = viz.encode_volume(images, masks)
    assert [u.split(";")[0] for u in uris] == ["data:image/png"] * 3  # two images, one mask sprite
    decoded_images, decoded_masks = viz.decode_volume(uris, layout)
    assert layout["shape"] == [7, 5, 4] and layout["bits"] == 8 and layout["lossy"] is None
    for original, decoded in zip(images, decoded_images, strict=True):
        assert decoded.dtype == np.uint8
        np.testing.assert_array_equal(decoded, original)
    for original, decoded in zip(masks, decoded_masks, strict=True):
        np.testing.assert_array_equal(decoded, original)


def test_one_image_and_an_odd_slice_count_round_trip():
    images, masks = _volumes((3, 9, 5))
    uris, layout = viz.encode_volume(images[:1], masks[:1])
    (image,), (mask,) = viz.decode_volume(uris, layout)
    np.testing.assert_array_equal(image, images[0])
    np.testing.assert_array_equal(mask, masks[0])


def test_encode_refuses_float_images_and_mismatched_shapes():
    images, masks = _volumes()
    with pytest.raises(ValueError, match="uint8"):
        viz.encode_volume([images[0].astype(np.float32)])
    with pytest.raises(ValueError, match="shape"):
        viz.encode_volume(images, [np.zeros((7, 5, 3), bool)])
    with pytest.raises(ValueError, match="one to eight"):
        viz.encode_volume(images * 5)
    with pytest.raises(ValueError, match="quality"):
        viz.encode_volume(images, quality=0)


def test_lossy_images_stay_close_and_masks_stay_exact():
    rng = np.random.default_rng(3)
    smooth = np.add.outer(np.add.outer(np.arange(40), np.arange(32)), np.arange(6)).astype(float)
    image = np.clip(smooth * 2 + rng.normal(0, 4, smooth.shape), 0, 255).astype(np.uint8)
    mask = rng.random(image.shape) > 0.5
    uris, layout = viz.encode_volume([image], [mask], quality=90)
    assert uris[0].startswith("data:image/webp;base64,") and uris[1].startswith("data:image/png;base64,")
    assert layout["lossy"] == 90
    (decoded,), (decoded_mask,) = viz.decode_volume(uris, layout)
    error = np.abs(decoded.astype(int) - image)
    assert error.mean() < 4 and error.max() < 40
    np.testing.assert_array_equal(decoded_mask, mask)


def test_the_viewer_goes_lossy_only_when_the_lossless_page_would_be_too_big():
    rng = np.random.default_rng(4)
    smooth = np.add.outer(np.add.outer(np.arange(64), np.arange(64)), np.arange(16)).astype(float)
    noisy = {"T2": np.clip(smooth + rng.normal(0, 6, smooth.shape), 0, 255).astype(np.uint8)}
    lossless = sum(map(len, viz.encode_volume(list(noisy.values()))[0]))
    webp_90 = sum(map(len, viz.encode_volume(list(noisy.values()), quality=90)[0]))
    assert webp_90 < lossless
    _, config = viz.viewer_payload(viz.slice_viewer(noisy, (1, 1, 1), max_bytes=lossless).data)
    assert config["lossy"] is None
    uris, config = viz.viewer_payload(viz.slice_viewer(noisy, (1, 1, 1), max_bytes=webp_90).data)
    assert config["lossy"] == 90 and sum(map(len, uris)) == webp_90


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
    canonical = viz.case_in_ras(case)
    np.testing.assert_array_equal(canonical["images"]["T2"], volume[::-1, ::-1, :])
    np.testing.assert_array_equal(canonical["mask"], (volume > 10)[::-1, ::-1, :])
    np.testing.assert_allclose(canonical["spacing"], [1, 2, 3])


def test_canonical_swaps_spacing_with_permuted_axes():
    volume = np.zeros((4, 3, 2), np.float32)
    affine = np.array([[0, 2.0, 0, 0], [1.0, 0, 0, 0], [0, 0, 3.0, 0], [0, 0, 0, 1]])  # axis 0 is A
    case = {"images": {"T1": volume}, "mask": volume, "affine": affine, "case_id": "X"}
    canonical = viz.case_in_ras(case)
    assert canonical["images"]["T1"].shape == (3, 4, 2)
    np.testing.assert_allclose(canonical["spacing"], [2, 1, 3])


def test_slice_viewer_embeds_one_png_and_gets_a_unique_id():
    images, masks = _volumes()
    first = viz.slice_viewer({"T1": images[0], "T2": images[1]}, (1, 1, 3), {"ground truth": masks[0]}).data
    second = viz.slice_viewer({"T1": images[0]}, (1, 1, 3)).data
    assert first.count("data:image/png;base64,") == 3 and second.count("data:image/png;base64,") == 1
    assert '"names": ["T1", "T2"]' in first and '"maskNames": ["ground truth"]' in first
    ids = [html.split('class="mstt-viewer" id="')[1].split('"')[0] for html in (first, second)]
    assert ids[0] != ids[1]


def test_float_images_are_normalised_to_the_full_8_bit_range():
    ramp = np.linspace(-5, 50, 7 * 5 * 4, dtype=np.float32).reshape(7, 5, 4)
    html = viz.slice_viewer({"T2": ramp}, (1, 1, 1)).data
    (image,), _ = viz.decode_volume(*viz.viewer_payload(html))
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


# ---------------------------------------------------------------------------
# The rendered planes (live viewer) and the static viewer's frames.


def _phantom(shape=(12, 10, 6), seed=1):
    """Two float images (noise plus a bright blob, with outliers for the percentile clamp)
    and two overlapping blob masks, RAS ordered."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    blob = ((x - 5) / 3.5) ** 2 + ((y - 4) / 3) ** 2 + ((z - 2.5) / 2) ** 2
    t1 = 100 + 40 * (blob < 1) + rng.normal(0, 5, shape)
    t2 = 30 + 90 * (blob < 1.2) + rng.normal(0, 8, shape)
    t1.flat[0], t2.flat[1] = 1e4, -1e3  # outliers the clamp removes
    truth = blob < 1
    prediction = (((x - 6) / 3) ** 2 + ((y - 5) / 3.5) ** 2 + ((z - 3) / 2) ** 2) < 1
    return {"T1": t1.astype(np.float32), "T2": t2.astype(np.float32)}, {
        "ground truth": truth,
        "prediction": prediction,
    }


def _painted(rgb):
    """Pixels that are not grey (the contours; grey pixels have R == G == B)."""
    return (rgb[..., 0] != rgb[..., 1]) | (rgb[..., 1] != rgb[..., 2])


def test_render_plane_axial_is_the_radiological_axial_slice_in_grey():
    volume = np.random.default_rng(0).integers(0, 256, (7, 5, 4), dtype=np.uint8)
    for k in range(4):
        rgb = viz.render_plane(volume, [], "axial", k)
        assert rgb.shape == (5, 7, 3) and rgb.dtype == np.uint8
        for channel in range(3):
            np.testing.assert_array_equal(rgb[..., channel], volume[::-1, ::-1, k].T)


def test_render_plane_puts_a_voxel_where_the_static_viewer_draws_it():
    nx, ny, nz = 6, 5, 4
    x, y, z = 1, 3, 2  # low x is towards the patient's left, drawn on the right (radiological)
    volume = np.zeros((nx, ny, nz), np.uint8)
    volume[x, y, z] = 200
    expected = {  # plane: (index, shape, (row, column)), as viewer.js maps display pixels to voxels
        "axial": (z, (ny, nx), (ny - 1 - y, nx - 1 - x)),
        "coronal": (y, (nz, nx), (nz - 1 - z, nx - 1 - x)),
        "sagittal": (x, (nz, ny), (nz - 1 - z, ny - 1 - y)),
    }
    for plane, (index, shape, pixel) in expected.items():
        grey = viz.render_plane(volume, [], plane, index)[..., 0]
        assert grey.shape == shape, plane
        assert list(zip(*np.nonzero(grey), strict=True)) == [pixel], plane
    with pytest.raises(ValueError, match="plane"):
        viz.render_plane(volume, [], "oblique", 0)


def test_live_renderer_paints_contours_exactly_on_each_masks_boundary():
    images, masks = _phantom()
    volume = eight_bit(images["T2"])
    truth, prediction = masks["ground truth"], masks["prediction"]
    green, red = (0, 255, 0), (255, 0, 0)
    checked = 0
    for plane, axis in PLANE_AXIS.items():
        for index in range(volume.shape[axis]):
            rgb = viz.render_plane(volume, [truth, prediction], plane, index)
            grey = display_slice(volume, plane, index)
            truth_ring = viz.mask_boundary(display_slice(truth, plane, index))
            prediction_ring = viz.mask_boundary(display_slice(prediction, plane, index))
            painted = _painted(rgb)
            # every painted pixel is on a mask's boundary, and every boundary pixel is painted
            np.testing.assert_array_equal(painted, truth_ring | prediction_ring)
            assert not np.any(painted & ~(display_slice(truth | prediction, plane, index)))
            assert np.all(rgb[prediction_ring] == red)  # the later mask is drawn on top
            assert np.all(rgb[truth_ring & ~prediction_ring] == green)
            for channel in range(3):
                np.testing.assert_array_equal(rgb[~painted][:, channel], grey[~painted])
            checked += int(painted.sum())
    assert checked > 100


def test_static_viewer_frames_decode_to_the_8_bit_slices_its_config_states():

    images, masks = _phantom((9, 7, 5), seed=4)
    html = viz.slice_viewer(images, (0.8, 0.8, 4.0), masks).data
    uris, config = viz.viewer_payload(html)
    assert config["bits"] == 8 and config["lossy"] is None
    assert config["shape"] == [9, 7, 5] and config["names"] == ["T1", "T2"]
    decoded_images, decoded_masks = viz.decode_volume(uris, config)
    for name, decoded in zip(config["names"], decoded_images, strict=True):
        expected = np.round(normalise_intensity(images[name]) * 255).astype(np.uint8)
        assert decoded.dtype == np.uint8 and decoded.max() == 2 ** config["bits"] - 1
        np.testing.assert_array_equal(decoded, expected)
        for k in range(5):  # and so every displayed slice is the volume's
            shown = display_slice(decoded, "axial", k)
            np.testing.assert_array_equal(shown, display_slice(expected, "axial", k))
    for name, decoded in zip(config["maskNames"], decoded_masks, strict=True):
        np.testing.assert_array_equal(decoded, masks[name])


def _decoded(image_widget):
    import io

    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(image_widget.value)).convert("RGB"))


def test_live_viewer_redraws_on_slider_and_modality_and_links_the_planes():
    images, masks = _phantom()
    viewer = viz.live_viewer(images, (1.0, 1.0, 3.0), masks, title="case")
    t1, t2 = eight_bit(images["T1"]), eight_bit(images["T2"])
    mask_list = list(masks.values())
    point = [viewer.sliders[p].value for p in ("sagittal", "coronal", "axial")]
    assert point == start_point(mask_list, t1.shape)
    for plane in PLANES:  # first frames: T1, both contours, crosshair at the point
        np.testing.assert_array_equal(
            _decoded(viewer.planes[plane]),
            viz.render_plane(t1, mask_list, plane, viewer.sliders[plane].value, point=point),
        )

    axial, coronal = viewer.planes["axial"].value, viewer.planes["coronal"].value
    new_z = (point[2] + 2) % t1.shape[2]
    viewer.sliders["axial"].value = new_z
    assert viewer.planes["axial"].value != axial
    point[2] = new_z
    np.testing.assert_array_equal(
        _decoded(viewer.planes["axial"]), viz.render_plane(t1, mask_list, "axial", new_z, point=point)
    )
    # the coronal plane keeps its slice; its crosshair follows the new z
    assert viewer.planes["coronal"].value != coronal
    np.testing.assert_array_equal(
        _decoded(viewer.planes["coronal"]), viz.render_plane(t1, mask_list, "coronal", point[1], point=point)
    )
    assert f"({point[0]}, {point[1]}, {point[2]}) voxels" in viewer.point_label.value

    axial = viewer.planes["axial"].value
    viewer.modality.value = "T2"
    assert viewer.planes["axial"].value != axial
    for plane in PLANES:
        np.testing.assert_array_equal(
            _decoded(viewer.planes[plane]),
            viz.render_plane(t2, mask_list, plane, viewer.sliders[plane].value, point=point),
        )


def test_live_viewer_mask_and_crosshair_toggles():
    images, masks = _phantom()
    viewer = viz.live_viewer(images, (1.0, 1.0, 3.0), masks)
    t1 = eight_bit(images["T1"])
    viewer.crosshair.value = False
    viewer.mask_toggles["prediction"].value = False
    axial = viewer.sliders["axial"].value
    np.testing.assert_array_equal(
        _decoded(viewer.planes["axial"]), viz.render_plane(t1, [masks["ground truth"]], "axial", axial)
    )
    rgb = _decoded(viewer.planes["axial"])
    assert not np.any(np.all(rgb == (255, 0, 0), axis=-1)) and np.any(np.all(rgb == (0, 255, 0), axis=-1))
    # without the crosshair, a slider redraws its own plane only
    coronal = viewer.planes["coronal"].value
    viewer.sliders["axial"].value = (axial + 1) % t1.shape[2]
    assert viewer.planes["coronal"].value == coronal


def test_live_viewer_plane_sizes_follow_the_spacing():
    images, _ = _phantom((12, 10, 6))
    viewer = viz.live_viewer(images, (1.0, 2.0, 4.0), display_px=240)
    sizes = {p: (int(viewer.planes[p].width), int(viewer.planes[p].height)) for p in PLANES}
    # extents (mm): x 12, y 20, z 24; the largest (24 mm) is 240 px
    assert sizes == {"axial": (120, 200), "coronal": (120, 240), "sagittal": (200, 240)}
    with pytest.raises(ValueError, match="shape"):
        viz.live_viewer({"T1": images["T1"]}, (1, 1, 1), {"m": np.zeros((12, 10, 5), bool)})


def test_live_case_viewer_shows_a_case_in_ras_with_its_title(tmp_path):
    import nibabel as nib
    import pandas as pd

    images, masks = _phantom((12, 10, 6))
    lps = np.diag([-0.8, -0.8, 3.0, 1.0])  # stored LPS: the viewer flips x and y to RAS
    paths = {}
    for name, array in (("t1", images["T1"]), ("t2", images["T2"]), ("mask", masks["ground truth"])):
        paths[name] = tmp_path / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(np.asarray(array[::-1, ::-1], np.float32), lps), paths[name])
    row = pd.Series(
        {"case_id": "MSTT_X", "tissue": "Fat", "site": "thigh", **{k: str(v) for k, v in paths.items()}}
    )
    viewer = viz.live_case_viewer(row, extra_masks={"prediction": masks["prediction"][::-1, ::-1]})
    assert "MSTT_X · Fat · thigh" in viewer.children[0].value
    assert list(viewer.mask_toggles) == ["ground truth", "prediction"]
    t1 = eight_bit(images["T1"])
    point = [viewer.sliders[p].value for p in ("sagittal", "coronal", "axial")]
    np.testing.assert_array_equal(
        _decoded(viewer.planes["axial"]),
        viz.render_plane(t1, list(masks.values()), "axial", point[2], point=point),
    )


CANVAS_RGB = """
const c = arguments[0], d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
return [c.width, c.height, Array.from(d)];"""


@pytest.mark.browser
def test_static_viewer_in_chromium_draws_the_planes_render_plane_draws(tmp_path):
    """The script's contours (and slices) are the live renderer's: contours on mask_boundary."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    images, masks = _phantom()
    page = tmp_path / "viewer.html"
    page.write_text(
        "<!doctype html><meta charset='utf-8'><body>" + viz.slice_viewer(images, (1, 1, 3), masks).data
    )
    pytest.importorskip("selenium")
    if not chromium_found():
        pytest.skip(MISSING)
    with headless_chromium() as browser:
        browser.get(page.as_uri())
        WebDriverWait(browser, 20).until(
            lambda b: b.execute_script(
                "return document.querySelector('.mstt-viewer[data-ready=\"1\"]') !== null"
            )
        )
        browser.find_element(By.CSS_SELECTOR, "input.mstt-cross").click()  # crosshair off
        volumes = [eight_bit(images["T1"]), eight_bit(images["T2"])]
        for modality, volume in enumerate(volumes):
            browser.find_elements(By.CSS_SELECTOR, "input.mstt-modality")[modality].click()
            for plane in PLANES:
                figure = browser.find_element(By.CSS_SELECTOR, f"figure.mstt-{plane}")
                index = int(figure.find_element(By.CSS_SELECTOR, "input[type=range]").get_attribute("value"))
                width, height, data = browser.execute_script(
                    CANVAS_RGB, figure.find_element(By.TAG_NAME, "canvas")
                )
                drawn = np.array(data, np.uint8).reshape(height, width, 4)[..., :3]
                expected = viz.render_plane(volume, list(masks.values()), plane, index)
                assert _painted(expected).any(), plane
                np.testing.assert_array_equal(drawn, expected, err_msg=f"{plane}, image {modality}")


def test_wrappable_headers_have_spaces_where_underscores_were():
    import pandas as pd

    from mstt_lib.viz import wrappable

    table = pd.DataFrame({"case_id": ["A"], "fp_near_ml": [1.0], 3: [2]}).set_index("case_id")
    assert list(wrappable(table).columns) == ["fp near ml", 3] and wrappable(table).index.name == "case_id"
    assert list(table.columns) == ["fp_near_ml", 3]  # a copy: the table itself is unchanged


def test_trend_figure_draws_each_tissues_fitted_line_in_its_points_colour():
    import pandas as pd

    from mstt_lib.analysis import trend_table

    volumes = [1.0, 10.0, 100.0]
    frame = pd.DataFrame(
        {
            "tissue": ["Vascular"] * 3 + ["Fibrous"] * 3 + ["Lipoma"] * 3,
            "volume_ml": volumes * 3,
            "dice": [0.5, 0.6, 0.7, 0.9, 0.8, 0.7, 0.4, 0.5, 0.9],
        }
    )
    figure = viz.trend_figure(frame, "volume_ml", log_x=True)
    fits = trend_table(frame, "volume_ml", log_x=True)
    points = {t.legendgroup: t for t in figure.data if t.mode == "markers"}
    lines = {t.legendgroup: t for t in figure.data if t.mode == "lines"}
    assert set(points) == set(lines) == {"Vascular", "Fibrous", "Lipoma"}
    for tissue, line in lines.items():
        assert line.line.color == points[tissue].marker.color, tissue
        # the line is the table's fit, drawn over the points' volumes on the log axis
        fit = fits.loc[tissue]
        assert line.x[0] == pytest.approx(1) and line.x[-1] == pytest.approx(100)
        assert line.y[-1] == pytest.approx(fit["slope"] * 2 + fit["intercept"])
    assert len({t.marker.color for t in points.values()}) == 3
    # a tissue keeps its colour whichever tissues a figure shows (and in which order)
    alone = viz.trend_figure(frame[frame["tissue"] == "Fibrous"], "volume_ml", log_x=True)
    assert alone.data[0].marker.color == points["Fibrous"].marker.color
    assert viz.tissue_colours(["Lipoma", "Fat"])["Fat"] == viz.tissue_colours(["Fat"])["Fat"]
