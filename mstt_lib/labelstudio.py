"""Label Studio export and import: the paper annotated MSTT-199 in Label Studio.

``export_volume`` turns one 3D NIfTI volume into one 8-bit PNG per slice, a Label
Studio task file (``tasks.json``, one task per slice), a labeling config
(``labelstudio_config.xml``: one ``BrushLabels`` tag with the label ``Tumour``) and a
sidecar ``export.json`` that records how the PNGs were cut from the volume. An
existing mask (a model's output, say) can ride along as pre-annotations
(``predictions``) for the annotator to correct. ``import_annotations`` reads Label
Studio's standard "JSON" export of such a project and writes a 3D uint8 mask NIfTI
on the grid of the volume the PNGs came from.

The brush masks are run-length encoded with Label Studio's own code, from the
``label-studio-converter`` package (``label_studio_converter.brush``: ``mask2rle`` /
``encode_rle`` to write, ``decode_rle`` to read); this module does not encode RLE
itself.

Slices and PNG orientation
    ``plane`` picks the array axis a slice fixes, as in :mod:`mstt_lib.slices`:
    ``axial`` fixes axis 2, ``coronal`` axis 1, ``sagittal`` axis 0. The two axes left,
    ``a < b``, make the PNG: **PNG column = axis a, PNG row = axis b**, so the PNG is
    the transposed slice. For axial slice ``k``::

        png[row, col] == volume[col, row, k]     # png = volume[:, :, k].T
        PNG width = shape[0], PNG height = shape[1]

    (coronal slice ``k``: ``png[row, col] == volume[col, k, row]``; sagittal:
    ``png[row, col] == volume[k, col, row]``). With ``flip=True`` both PNG axes are
    reversed as well (``png = slice.T[::-1, ::-1]``, ``mstt_lib.geometry.to_display``: the view
    every figure and viewer draws: anterior up, the patient's right on the left for RAS-ordered
    volumes). Slice ``k`` (0-based array index) is ``instance_number = k + 1``.
    The plane and flip are written to ``export.json`` and into every task's ``data``,
    so the import inverts exactly what the export did.

Intensities
    One window for the whole volume, so slices stay comparable: the 0.5th and 99.5th
    percentiles ``lo``, ``hi`` of the finite voxels; each voxel becomes
    ``round(255 * (clip(v, lo, hi) - lo) / (hi - lo))`` (0 where ``hi == lo`` or the
    voxel is not finite). ``lo`` and ``hi`` are recorded in ``export.json``.

Image URLs
    A slice's URL is ``image_root_url + "<out_dir name>/<png name>"``: with Label
    Studio's local file serving (``LOCAL_FILES_SERVING_ENABLED=true``) set
    ``LOCAL_FILES_DOCUMENT_ROOT`` to the folder that holds the per-case export folders
    (``out_dir.parent``), and add a local storage for it.

Task data carries the public case id only (``patient``), never the source path; the
sidecar stores the source volume's shape, affine and a SHA-256 of its bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote

import nibabel as nib
import numpy as np

from mstt_lib.geometry import PLANE_AXIS, to_display
from mstt_lib.io import CaseFileError, atomic_path, case_id_problem, load_nifti, read_volume, save_nifti

__all__ = [
    "LabelStudioError",
    "PLANE_AXIS",
    "LABEL",
    "TASKS_FILE",
    "CONFIG_FILE",
    "SIDECAR_FILE",
    "labeling_config",
    "export_volume",
    "import_annotations",
    "slice_to_png",
    "png_to_slice",
]

LABEL = "Tumour"
FROM_NAME = "label"  # the BrushLabels tag's name in the labeling config
TO_NAME = "image"  # the Image tag's name
TASKS_FILE = "tasks.json"
CONFIG_FILE = "labelstudio_config.xml"
SIDECAR_FILE = "export.json"
SIDECAR_FORMAT = "mstt-labelstudio-export"
SIDECAR_VERSION = 1
PERCENTILES = (0.5, 99.5)
# Result types that draw a region: any of these in an export means the annotation is not
# (only) a brush mask, and dropping it silently would lose tumour voxels.
_REGION_TYPES = {
    "polygonlabels",
    "rectanglelabels",
    "ellipselabels",
    "keypointlabels",
    "polygon",
    "rectangle",
    "ellipse",
    "keypoint",
    "magicwand",
}
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class LabelStudioError(CaseFileError):
    """A Label Studio task or annotation file that cannot be used; names the case and file."""


# ---------------------------------------------------------------------------
# Orientation


def _plane_axes(plane: str) -> tuple[int, int, int]:
    """(slice axis, PNG column axis, PNG row axis) of a plane."""
    if plane not in PLANE_AXIS:
        raise ValueError(f"plane should be one of {sorted(PLANE_AXIS)}, got {plane!r}")
    axis = PLANE_AXIS[plane]
    a, b = (i for i in range(3) if i != axis)
    return axis, a, b


def slice_to_png(volume: np.ndarray, index: int, plane: str = "axial", flip: bool = False) -> np.ndarray:
    """The 2D array (rows, columns) a slice's PNG shows; see the module docstring."""
    axis, _, _ = _plane_axes(plane)
    where: list = [slice(None)] * 3
    where[axis] = index
    image = volume[tuple(where)]  # a view (np.take copies, slowly for F-ordered volumes)
    return to_display(image) if flip else image.T  # flip: the viewers' radiological display


def png_to_slice(image: np.ndarray, plane: str = "axial", flip: bool = False) -> np.ndarray:
    """Invert ``slice_to_png``: the 2D slice (array axes a, b) a PNG-shaped array belongs to."""
    _plane_axes(plane)
    return (image[::-1, ::-1] if flip else image).T


def _png_size(shape: tuple[int, ...], plane: str) -> tuple[int, int]:
    """(width, height) of a plane's PNGs for a volume of ``shape``."""
    _, a, b = _plane_axes(plane)
    return int(shape[a]), int(shape[b])


# ---------------------------------------------------------------------------
# Export


def labeling_config(label: str = LABEL) -> str:
    """The labeling config of the paper's project: one image, one brush label."""
    return (
        "<View>\n"
        '  <Header value="$title"/>\n'
        f'  <Image name="{TO_NAME}" value="$image" zoom="true" zoomControl="true"/>\n'
        f'  <BrushLabels name="{FROM_NAME}" toName="{TO_NAME}">\n'
        f'    <Label value="{label}" background="#ff0000"/>\n'
        "  </BrushLabels>\n"
        "</View>\n"
    )


def _window(volume: np.ndarray) -> tuple[float, float]:
    finite = volume[np.isfinite(volume)]
    if finite.size == 0:
        return 0.0, 0.0
    lo, hi = np.percentile(finite, PERCENTILES)
    return float(lo), float(hi)


def _to_uint8(volume: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if not hi > lo:
        return np.zeros(volume.shape, dtype=np.uint8)
    scaled = (np.clip(volume, lo, hi) - lo) / (hi - lo) * 255.0
    scaled = np.where(np.isfinite(volume), scaled, 0.0)  # clip would make +inf white
    return np.rint(scaled).astype(np.uint8)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _write_png(image: np.ndarray, path: Path) -> None:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(tmp, format="PNG")


def _brush_result(mask_png: np.ndarray, label: str) -> dict[str, Any]:
    """One Label Studio brushlabels result for a PNG-oriented 2D mask (RLE by Label Studio's code)."""
    from label_studio_converter.brush import mask2rle

    height, width = mask_png.shape
    rgba_value = (np.asarray(mask_png) > 0).astype(np.uint8) * 255  # mask2rle repeats it into R, G, B, A
    return {
        "from_name": FROM_NAME,
        "to_name": TO_NAME,
        "type": "brushlabels",
        "original_width": int(width),
        "original_height": int(height),
        "image_rotation": 0,
        "value": {"format": "rle", "rle": [int(v) for v in mask2rle(rgba_value)], "brushlabels": [label]},
    }


def export_volume(
    image_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    case_id: str,
    modality: str = "T2",
    image_root_url: str = "/data/local-files/?d=",
    plane: str = "axial",
    *,
    mask_path: str | os.PathLike | None = None,
    flip: bool = False,
    label: str = LABEL,
    model_version: str = "mstt",
) -> Path:
    """Write a volume's slices as PNGs plus a Label Studio task file; return the task file.

    ``out_dir`` receives ``<case>_<modality>_<plane>_<n>.png`` (n = instance number,
    1-based), ``tasks.json`` (a JSON list, one task per slice, to import into a
    project), ``labelstudio_config.xml`` and ``export.json`` (the sidecar that
    ``import_annotations`` can check a reference image against). Each task's ``data``
    holds ``image`` (URL), ``patient`` (``case_id``), ``modality``, ``plane``,
    ``instance_number``, ``slice_index`` (0-based), ``n_slices``, ``flip`` and a
    ``title``. With ``mask_path`` the mask's non-zero voxels become pre-annotations
    (``predictions``, brushlabels RLE) on the slices where it has any.
    """
    image_path = Path(image_path)
    out_dir = Path(out_dir)
    for name, value in (("case_id", case_id), ("modality", modality)):
        if not isinstance(value, str) or not _SAFE_NAME.match(value):
            raise ValueError(f"{name} should be a plain name (letters, digits, '.', '_', '-'), got {value!r}")
    axis, _, _ = _plane_axes(plane)

    image = load_nifti(image_path, case_id)
    volume = read_volume(image, case_id, np.float32, finite=False)
    lo, hi = _window(volume)
    pixels = _to_uint8(volume, lo, hi)
    width, height = _png_size(volume.shape, plane)

    mask = None
    if mask_path is not None:
        mask_image = load_nifti(mask_path, case_id)
        if mask_image.shape != image.shape:
            raise CaseFileError(
                case_id, mask_path, f"mask shape {mask_image.shape} differs from the image's {image.shape}"
            )
        if not np.allclose(mask_image.affine, image.affine, atol=1e-4):
            raise CaseFileError(case_id, mask_path, "mask affine differs from the image's")
        mask = read_volume(mask_image, case_id, np.float32) > 0

    n_slices = int(volume.shape[axis])
    digits = max(3, len(str(n_slices)))
    tasks = []
    png_names = []
    for index in range(n_slices):
        number = index + 1
        name = f"{case_id}_{modality}_{plane}_{number:0{digits}d}.png"
        _write_png(slice_to_png(pixels, index, plane, flip), out_dir / name)
        png_names.append(name)
        task: dict[str, Any] = {
            "data": {
                "image": image_root_url + quote(f"{out_dir.name}/{name}", safe="/"),
                "patient": case_id,
                "modality": modality,
                "plane": plane,
                "instance_number": number,
                "slice_index": index,
                "n_slices": n_slices,
                "flip": bool(flip),
                "title": f"{case_id} {modality} {plane} slice {number}/{n_slices}",
            }
        }
        if mask is not None:
            mask_png = slice_to_png(mask, index, plane, flip)
            if mask_png.any():
                task["predictions"] = [
                    {"model_version": model_version, "result": [_brush_result(mask_png, label)]}
                ]
        tasks.append(task)

    tasks_path = out_dir / TASKS_FILE
    _write_text(tasks_path, json.dumps(tasks, indent=1) + "\n")
    _write_text(out_dir / CONFIG_FILE, labeling_config(label))
    sidecar = {
        "format": SIDECAR_FORMAT,
        "version": SIDECAR_VERSION,
        "case_id": case_id,
        "modality": modality,
        "plane": plane,
        "slice_axis": axis,
        "flip": bool(flip),
        "orientation": (
            "png = volume slice transposed (column = lower remaining array axis, row = higher one)"
            + (", then both PNG axes reversed" if flip else "")
            + "; instance_number = slice_index + 1"
        ),
        "shape": [int(s) for s in volume.shape],
        "affine": np.asarray(image.affine, dtype=float).tolist(),
        "image_sha256": _sha256(image_path),
        "png_width": width,
        "png_height": height,
        "intensity_window": {"percentiles": list(PERCENTILES), "lo": lo, "hi": hi},
        "label": label,
        "pre_annotations": mask is not None,
        "tasks_file": TASKS_FILE,
        "config_file": CONFIG_FILE,
        "pngs": png_names,
    }
    _write_text(out_dir / SIDECAR_FILE, json.dumps(sidecar, indent=1) + "\n")
    return tasks_path


# ---------------------------------------------------------------------------
# Import


def _read_json(path: Path, case_id: str) -> Any:
    if not path.is_file():
        raise LabelStudioError(case_id, path, "file not found")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LabelStudioError(case_id, path, f"not valid JSON: {exc}") from None


def _slice_of(data: dict, number: int, case_id: str, path: Path) -> int:
    """The 0-based slice index a task's data names (slice_index, else instance_number - 1)."""
    index = data.get("slice_index")
    instance = data.get("instance_number")
    for name, value in (("slice_index", index), ("instance_number", instance)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise LabelStudioError(case_id, path, f"task {number}: {name} {value!r} is not an integer")
    if index is None and instance is None:
        raise LabelStudioError(
            case_id, path, f"task {number} has no slice information (data.slice_index / data.instance_number)"
        )
    if index is not None and instance is not None and instance != index + 1:
        raise LabelStudioError(
            case_id, path, f"task {number}: instance_number {instance} does not match slice_index {index}"
        )
    return index if index is not None else instance - 1


def _decode(result: dict, width: int, height: int, where: str, case_id: str, path: Path) -> np.ndarray:
    """A brushlabels result as a (height, width) bool array, by Label Studio's decode_rle."""
    from label_studio_converter.brush import decode_rle

    value = result.get("value") or {}
    if value.get("format") != "rle":
        raise LabelStudioError(
            case_id, path, f"{where}: brush format {value.get('format')!r} is not supported (only 'rle')"
        )
    size = (result.get("original_width"), result.get("original_height"))
    if size != (width, height):
        raise LabelStudioError(
            case_id,
            path,
            f"{where}: brush size {size[0]}x{size[1]} (width x height) does not match the volume's "
            f"{width}x{height} slices",
        )
    try:
        flat = decode_rle(bytes(value.get("rle") or []))
    except Exception as exc:  # a list with values out of 0..255, a truncated bit stream...
        raise LabelStudioError(case_id, path, f"{where}: RLE cannot be decoded: {exc}") from None
    if flat.size != width * height * 4:
        raise LabelStudioError(
            case_id, path, f"{where}: RLE holds {flat.size} values, expected {width * height * 4} (RGBA)"
        )
    # As label_studio_converter.brush.decode_from_annotation: RGBA, rows of width, alpha is the mask.
    return flat.reshape(height, width, 4)[:, :, 3] > 0


def import_annotations(
    export_json: str | os.PathLike,
    out_dir_or_path: str | os.PathLike,
    reference_image: str | os.PathLike | nib.Nifti1Image,
    case_id: str | None = None,
    *,
    sidecar: str | os.PathLike | None = None,
    label: str | None = LABEL,
) -> Path:
    """Turn a Label Studio "JSON" export of one case into a 3D uint8 mask NIfTI; return its path.

    ``out_dir_or_path`` is the mask file (``.nii`` / ``.nii.gz``) or a folder, which gets
    ``<case>.nii.gz``. The mask has the shape and affine of ``reference_image``, the
    volume the PNGs were cut from. Each task's slice comes from ``data.slice_index``
    (else ``data.instance_number - 1``); its plane and flip from ``data.plane`` /
    ``data.flip`` (default ``axial``, no flip), or from ``sidecar`` (an ``export.json``),
    which is also checked against the reference image. Every brushlabels result of every
    annotation that was not cancelled is OR-ed into its slice; ``predictions`` and drafts
    are ignored; slices without annotation stay 0. ``label`` (None: any) is the brush
    label the results must carry. All tasks must be of one patient (``case_id`` if given).
    """
    export_json = Path(export_json)
    known = case_id or "?"
    tasks = _read_json(export_json, known)
    if not isinstance(tasks, list):
        raise LabelStudioError(
            known, export_json, "expected a JSON list of tasks (Label Studio 'JSON' export)"
        )

    # Patient first, so every later message names the right case.
    patients = []
    for number, task in enumerate(tasks):
        data = task.get("data") if isinstance(task, dict) else None
        if not isinstance(data, dict):
            raise LabelStudioError(
                known, export_json, f"task {number} has no 'data' (not a Label Studio 'JSON' export?)"
            )
        patient = data.get("patient")
        if not isinstance(patient, str) or not patient:
            raise LabelStudioError(known, export_json, f"task {number} has no patient (data.patient)")
        patients.append(patient)
    found = sorted(set(patients))
    if len(found) > 1:
        raise LabelStudioError(known, export_json, f"tasks of several patients in one export: {found}")
    if case_id is not None and found and found != [case_id]:
        raise LabelStudioError(case_id, export_json, f"the tasks are of patient {found[0]}, not {case_id}")
    case = case_id or (found[0] if found else "?")
    if not tasks:
        raise LabelStudioError(case, export_json, "the export holds no tasks")
    unsafe = case_id_problem(case)
    if unsafe:  # the mask file is named after it
        raise LabelStudioError(case, export_json, unsafe)

    if isinstance(reference_image, (str, os.PathLike)):
        reference_path = Path(reference_image)
        reference = load_nifti(reference_path, case)
    else:
        reference = reference_image
        reference_path = reference.get_filename()
    shape = tuple(int(s) for s in reference.shape)
    if len(shape) != 3:
        raise CaseFileError(case, reference_path, f"expected a 3D reference volume, got shape {shape}")
    affine = np.asarray(reference.affine, dtype=float)

    expected = None
    if sidecar is not None:
        expected = _check_sidecar(Path(sidecar), case, shape, affine, reference_path)

    mask = np.zeros(shape, dtype=bool)
    for number, task in enumerate(tasks):
        data = task["data"]
        plane = data.get("plane", "axial")
        flip = data.get("flip", False)
        if plane not in PLANE_AXIS or not isinstance(flip, bool):
            raise LabelStudioError(
                case, export_json, f"task {number}: unknown plane {plane!r} / flip {flip!r}"
            )
        if expected is not None and (plane, flip) != expected:
            raise LabelStudioError(
                case,
                export_json,
                f"task {number}: plane/flip {(plane, flip)} differ from the sidecar's {expected}",
            )
        axis, _, _ = _plane_axes(plane)
        n_slices = data.get("n_slices", shape[axis])
        if n_slices != shape[axis]:  # the reference is another volume (no sidecar needed to see it)
            raise LabelStudioError(
                case,
                export_json,
                f"task {number}: the PNGs were cut from a volume of {n_slices} {plane} slices, "
                f"the reference image has {shape[axis]} ({reference_path})",
            )
        index = _slice_of(data, number, case, export_json)
        if not 0 <= index < shape[axis]:
            raise LabelStudioError(
                case,
                export_json,
                f"task {number}: slice {index + 1} (instance_number) is out of range 1..{shape[axis]} "
                f"of the {plane} plane",
            )
        width, height = _png_size(shape, plane)
        drawn = np.zeros((height, width), dtype=bool)
        for annotation in task.get("annotations") or []:
            if annotation.get("was_cancelled"):
                continue
            for item, result in enumerate(annotation.get("result") or []):
                where = f"task {number} (slice {index + 1}), result {item}"
                kind = str(result.get("type", "")).lower()
                if kind in _REGION_TYPES:
                    raise LabelStudioError(
                        case, export_json, f"{where}: {kind} results are not supported (brush masks only)"
                    )
                if kind != "brushlabels":
                    continue  # choices, text, ratings: no voxels
                labels = (result.get("value") or {}).get("brushlabels") or []
                if label is not None and label not in labels:
                    raise LabelStudioError(
                        case, export_json, f"{where}: brush labels {labels} do not include {label!r}"
                    )
                drawn |= _decode(result, width, height, where, case, export_json)
        if drawn.any():
            target = [slice(None)] * 3
            target[axis] = index
            mask[tuple(target)] |= png_to_slice(drawn, plane, flip)

    out = Path(out_dir_or_path)
    if not out.name.endswith((".nii", ".nii.gz")):
        out = out / f"{case}.nii.gz"
    return save_nifti(mask.astype(np.uint8), affine, out, dtype=np.uint8)


def _check_sidecar(
    path: Path, case: str, shape: tuple[int, ...], affine: np.ndarray, reference_path
) -> tuple[str, bool]:
    """Check an export.json against the reference image's grid; return its (plane, flip).

    Only the grid must agree (shape and affine): a T1 registered onto the exported T2's
    grid is as good a reference as the T2 itself, so the recorded SHA-256 is provenance.
    """
    info = _read_json(path, case)
    if not isinstance(info, dict) or info.get("format") != SIDECAR_FORMAT:
        raise LabelStudioError(case, path, f"not an {SIDECAR_FILE} written by export_volume")
    if info.get("case_id") != case:
        raise LabelStudioError(case, path, f"the sidecar is of case {info.get('case_id')}, not {case}")
    if tuple(info.get("shape", ())) != shape:
        raise LabelStudioError(
            case,
            path,
            f"exported volume shape {tuple(info.get('shape', ()))} differs from the reference's {shape}",
        )
    try:
        recorded = np.asarray(info.get("affine"), dtype=float).reshape(4, 4)
    except (TypeError, ValueError):
        raise LabelStudioError(case, path, "the sidecar holds no 4x4 affine") from None
    if not np.allclose(recorded, affine, atol=1e-4):
        raise LabelStudioError(
            case, path, f"exported volume affine differs from the reference's ({reference_path})"
        )
    return info.get("plane", "axial"), bool(info.get("flip", False))
