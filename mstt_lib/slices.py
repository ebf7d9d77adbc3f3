"""2.5D samples (paper, section 4.2) and the on-disk cache training reads them from.

A sample is three consecutive slices (``index - 1``, ``index``, ``index + 1``,
clipped at the volume's edges) of every modality in one plane, stacked
modality-major: for T1 and T2 the six channels are

    0: T1[index-1]  1: T1[index]  2: T1[index+1]  3: T2[index-1]  4: T2[index]  5: T2[index+1]

(a T1-only cohort gives the first three). Planes: ``sagittal`` fixes axis 0 of the
1 mm grid (image rows = axis 1, columns = axis 2), ``coronal`` fixes axis 1 (rows =
axis 0, columns = axis 2), ``axial`` fixes axis 2 (rows = axis 0, columns = axis 1).
Each sample is centre-padded or centre-cropped to ``size`` (256 x 256 in the paper).

The cache holds, per case, the preprocessed 1 mm volumes as ``.npy`` files (images as
float16, channels first; the mask as uint8), an index of every slice with its tumour
voxel count, and a manifest. Samples are cut from memory-mapped volumes at read
time, so preprocessing never runs twice and the cache stays a few MB per case.
The folder name is a hash of the preprocessing settings and the input files, so a
change of either builds a new cache; files are renamed into place when complete and
the manifest is written last, so a half-written cache is never read.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mstt_lib.engines import map_cases
from mstt_lib.geometry import PLANE_AXIS, PLANES, isotropic_grid, resample_array, resample_mask
from mstt_lib.io import CaseFileError, atomic_path, load_nifti, read_volume, short_digest
from mstt_lib.preprocess import normalise_intensity

__all__ = [
    "PLANES",
    "PLANE_AXIS",
    "CacheSettings",
    "sample_25d",
    "fit_to_size",
    "restore_size",
    "preprocess_case",
    "read_case",
    "preprocess_read",
    "build_cache",
    "open_cache",
    "SliceCache",
]

MANIFEST = "manifest.json"
CACHE_VERSION = 1


@dataclass(frozen=True)
class CacheSettings:
    """What the cached volumes depend on (the sample size and slice filter are read-time choices)."""

    modalities: tuple[str, ...] = ("T1", "T2")
    spacing_mm: float = 1.0
    low_percentile: float = 0.05
    high_percentile: float = 99.95


# ---------------------------------------------------------------------------
# Samples.


def sample_25d(volume: np.ndarray, plane: str, index: int) -> np.ndarray:
    """The 2.5D sample of a (C, X, Y, Z) volume: (3C, rows, columns), channel order above."""
    if plane not in PLANE_AXIS:
        raise ValueError(f"unknown plane {plane!r}; choose one of {PLANES}")
    if volume.ndim != 4:
        raise ValueError(f"expected a (channels, x, y, z) volume, got shape {volume.shape}")
    axis = PLANE_AXIS[plane] + 1
    length = volume.shape[axis]
    if not 0 <= index < length:
        raise IndexError(f"{plane} slice {index} is outside 0..{length - 1}")
    if 0 < index < length - 1:  # a view: no fancy-index gather across a memory map
        window = [slice(None)] * 4
        window[axis] = slice(index - 1, index + 2)
        stack = volume[tuple(window)]
    else:
        stack = np.take(volume, np.clip([index - 1, index, index + 1], 0, length - 1), axis=axis)
    stack = np.moveaxis(stack, axis, 1)  # (C, 3, rows, columns); the 3 slices sat where `axis` was
    return stack.reshape(-1, *stack.shape[2:])


def _offsets(length: int, target: int) -> tuple[int, int]:
    """(start in source, start in target) of the centred overlap of two lengths."""
    if length >= target:
        return (length - target) // 2, 0
    return 0, (target - length) // 2


def fit_to_size(
    array: np.ndarray, size: tuple[int, int] = (256, 256), fill: float = 0.0, dtype=None
) -> np.ndarray:
    """Centre-pad or centre-crop the last two axes to ``size`` (converting to ``dtype`` on the way)."""
    rows, columns = array.shape[-2:]
    out = np.full((*array.shape[:-2], *size), fill, dtype=dtype or array.dtype)
    (r_src, r_dst), (c_src, c_dst) = _offsets(rows, size[0]), _offsets(columns, size[1])
    r_len, c_len = min(rows, size[0]), min(columns, size[1])
    out[..., r_dst : r_dst + r_len, c_dst : c_dst + c_len] = array[
        ..., r_src : r_src + r_len, c_src : c_src + c_len
    ]
    return out


def restore_size(array: np.ndarray, shape: tuple[int, int], fill: float = 0.0) -> np.ndarray:
    """Undo ``fit_to_size``: back to the original ``shape`` (cropped parts come back as ``fill``)."""
    rows, columns = shape
    out = np.full((*array.shape[:-2], rows, columns), fill, dtype=array.dtype)
    size = array.shape[-2:]
    (r_src, r_dst), (c_src, c_dst) = _offsets(rows, size[0]), _offsets(columns, size[1])
    r_len, c_len = min(rows, size[0]), min(columns, size[1])
    out[..., r_src : r_src + r_len, c_src : c_src + c_len] = array[
        ..., r_dst : r_dst + r_len, c_dst : c_dst + c_len
    ]
    return out


# ---------------------------------------------------------------------------
# Preprocessing one case.


def _path(row, key: str) -> str | None:
    value = row.get(key)
    return value if isinstance(value, str) and value else None


def read_case(row: pd.Series, settings: CacheSettings = CacheSettings()) -> dict:
    """Read from disk what ``preprocess_case`` needs (its first half, timed apart by ``mstt-predict``).

    Returns ``case_id``, the ``grid`` source (shape, affine), ``images`` ({modality: (data,
    affine)}), the native ``mask`` data (or None) and its ``mask_path``, and the native grid.
    """
    case_id = row["case_id"]
    first = next((m for m in ("T2", "T1") if m in settings.modalities), settings.modalities[0])
    grid_path = _path(row, "mask") or _path(row, first.lower())
    if grid_path is None:
        raise CaseFileError(case_id, None, f"missing modality {first} for preprocessing")
    grid_image = load_nifti(grid_path, case_id)
    images = {}
    for modality in settings.modalities:
        path = _path(row, modality.lower())
        if path is None:
            raise CaseFileError(case_id, None, f"missing modality {modality} for preprocessing")
        image = load_nifti(path, case_id)
        images[modality] = (read_volume(image, case_id), image.affine)
    mask_path = _path(row, "mask")
    native_image = load_nifti(_path(row, "native") or _path(row, "native_mask") or grid_path, case_id)
    return {
        "case_id": case_id,
        "grid": (tuple(grid_image.shape), grid_image.affine),
        "images": images,
        "mask": read_volume(grid_image, case_id) if mask_path else None,
        "mask_path": mask_path,
        "native_shape": tuple(native_image.shape),
        "native_affine": native_image.affine,
        "native_spacing": tuple(float(s) for s in native_image.header.get_zooms()[:3]),
    }


def preprocess_read(case: dict, settings: CacheSettings = CacheSettings()) -> dict:
    """``preprocess_case``'s second half: resample and normalise what ``read_case`` read."""
    grid_shape, grid_affine = case["grid"]
    shape, affine = isotropic_grid(grid_shape, grid_affine, settings.spacing_mm)
    channels = []
    for modality in settings.modalities:
        data, source_affine = case["images"][modality]
        data = resample_array(data, source_affine, shape, affine, order=1)
        channels.append(normalise_intensity(data, settings.low_percentile, settings.high_percentile))
    mask = None
    if case["mask"] is not None:
        native_mask = case["mask"]
        mask = resample_mask(native_mask, grid_affine, shape, affine)
        if not mask.any():
            raise CaseFileError(
                case["case_id"],
                case["mask_path"],
                f"mask is empty after resampling to {settings.spacing_mm} mm "
                f"({int((native_mask > 0).sum())} voxel(s) on the native grid)",
            )
    return {
        "image": np.stack(channels),
        "mask": mask,
        "affine": affine,
        "native_shape": case["native_shape"],
        "native_affine": case["native_affine"],
        "native_spacing": case["native_spacing"],
    }


def preprocess_case(row: pd.Series, settings: CacheSettings = CacheSettings()) -> dict:
    """Resample a registered case to the isotropic grid and normalise its images.

    Returns ``image`` (C, X, Y, Z) float32 in [0, 1], ``mask`` (X, Y, Z) bool (None for
    a case without a mask, such as new data to segment), the grid's ``affine``, and the
    native grid (``native_shape``, ``native_affine``) that predictions map back to: the
    ``native`` image's (the original mask or reference image) if the row names one.
    The grid covers the mask's field of view, or the reference image's (T2, else T1).
    A mask that is empty after resampling is an error.
    """
    return preprocess_read(read_case(row, settings), settings)


# ---------------------------------------------------------------------------
# The cache.


def _fingerprint(cases: pd.DataFrame, settings: CacheSettings) -> str:
    """Hash of the settings and of every input file's path, size and modification time."""
    files = []
    for row in cases.sort_values("case_id").to_dict("records"):
        for column in ("t1", "t2", "mask"):
            path = row.get(column)
            if isinstance(path, str) and path:
                stat = os.stat(path)
                files.append((row["case_id"], column, path, stat.st_size, stat.st_mtime_ns))
    return short_digest({"version": CACHE_VERSION, "settings": asdict(settings), "files": files})


def _cache_case(job: tuple) -> dict:
    row, folder, settings = job
    case_id = row["case_id"]
    meta_file = Path(folder) / f"{case_id}.json"
    if meta_file.is_file():  # finished earlier: resume
        return json.loads(meta_file.read_text())
    try:
        case = preprocess_case(pd.Series(row), settings)
    except CaseFileError as error:
        return {"case_id": case_id, "error": str(error)}
    with atomic_path(Path(folder) / f"{case_id}.image.npy") as tmp:
        np.save(tmp, case["image"].astype(np.float16))
    with atomic_path(Path(folder) / f"{case_id}.mask.npy") as tmp:
        np.save(tmp, case["mask"].astype(np.uint8))
    mask = case["mask"]
    counts = {plane: mask.sum(axis=tuple(a for a in range(3) if a != PLANE_AXIS[plane])) for plane in PLANES}
    meta = {
        "case_id": case_id,
        "shape": list(mask.shape),
        "affine": case["affine"].tolist(),
        "native_shape": list(case["native_shape"]),
        "native_affine": np.asarray(case["native_affine"]).tolist(),
        "native_spacing": list(case["native_spacing"]),
        "tumour_voxels": {plane: counts[plane].astype(int).tolist() for plane in PLANES},
    }
    with atomic_path(meta_file) as tmp:
        tmp.write_text(json.dumps(meta))
    return meta


def build_cache(
    cases: pd.DataFrame,
    cache_root: str | os.PathLike,
    settings: CacheSettings = CacheSettings(),
    workers: int = 2,
    progress: bool = True,
    skip_bad: bool = False,
    engine: str | None = None,
) -> Path:
    """Preprocess every case into ``<cache_root>/<hash>/`` (reused if complete); return the folder.

    A case that cannot be preprocessed (e.g. its mask is empty at 1 mm) stops the
    build with its message, or with ``skip_bad`` is left out and listed in the
    manifest's ``skipped``. ``engine``: where the cases run (``mstt_lib.engines``).
    """
    folder = Path(cache_root) / _fingerprint(cases, settings)
    manifest_file = folder / MANIFEST
    if manifest_file.is_file():
        skipped = json.loads(manifest_file.read_text())["skipped"]
        if skipped and not skip_bad:
            listing = "\n".join(f"  - {message}" for message in skipped)
            raise CaseFileError(
                "(cache)", folder, f"{len(skipped)} case(s) could not be preprocessed:\n{listing}"
            )
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(row, str(folder), settings) for row in cases.to_dict("records")]
    metas = map_cases(_cache_case, jobs, workers, engine, progress=progress, desc="preprocessing")
    errors = [m for m in metas if "error" in m]
    if errors and not skip_bad:
        listing = "\n".join(f"  - {m['error']}" for m in errors)
        raise CaseFileError(
            errors[0]["case_id"], None, f"preprocessing failed for {len(errors)} case(s):\n{listing}"
        )
    good = [m for m in metas if "error" not in m]
    rows = [
        (m["case_id"], plane, index, voxels)
        for m in good
        for plane in PLANES
        for index, voxels in enumerate(m["tumour_voxels"][plane])
    ]
    index = pd.DataFrame(rows, columns=["case_id", "plane", "index", "tumour_voxels"])
    with atomic_path(folder / "slices.csv") as tmp:
        index.to_csv(tmp, index=False)
    manifest = {
        "settings": asdict(settings),
        "cases": [m["case_id"] for m in good],
        "skipped": [m["error"] for m in errors],
        "channels": [f"{m}[{o}]" for m in settings.modalities for o in ("index-1", "index", "index+1")],
    }
    with atomic_path(manifest_file) as tmp:
        tmp.write_text(json.dumps(manifest, indent=1))
    return folder


class SliceCache:
    """Reads 2.5D samples from a complete cache through memory-mapped volumes."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        manifest_file = self.folder / MANIFEST
        if not manifest_file.is_file():
            raise FileNotFoundError(
                f"{self.folder} is not a complete slice cache (no {MANIFEST}); build it first"
            )
        self.manifest = json.loads(manifest_file.read_text())
        self.settings = CacheSettings(
            **{**self.manifest["settings"], "modalities": tuple(self.manifest["settings"]["modalities"])}
        )
        self.slices = pd.read_csv(self.folder / "slices.csv")
        self._volumes: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    @property
    def case_ids(self) -> list[str]:
        return list(self.manifest["cases"])

    def meta(self, case_id: str) -> dict:
        return json.loads((self.folder / f"{case_id}.json").read_text())

    def volumes(self, case_id: str) -> tuple[np.ndarray, np.ndarray]:
        """The memory-mapped (C, X, Y, Z) image and (X, Y, Z) mask of a case."""
        if case_id not in self._volumes:
            self._volumes[case_id] = (
                np.load(self.folder / f"{case_id}.image.npy", mmap_mode="r"),
                np.load(self.folder / f"{case_id}.mask.npy", mmap_mode="r"),
            )
        return self._volumes[case_id]

    def select(
        self,
        case_ids=None,
        planes=PLANES,
        min_tumour_voxels: int | None = 100,
    ) -> pd.DataFrame:
        """Rows of the slice index to use: training keeps slices with more than
        ``min_tumour_voxels`` tumour voxels (the paper's 100); ``None`` keeps every slice."""
        rows = self.slices[self.slices["plane"].isin(planes)]
        if case_ids is not None:
            rows = rows[rows["case_id"].isin(list(case_ids))]
        if min_tumour_voxels is not None:
            rows = rows[rows["tumour_voxels"] > min_tumour_voxels]
        return rows.reset_index(drop=True)

    def sample(self, case_id: str, plane: str, index: int, size=(256, 256)) -> tuple[np.ndarray, np.ndarray]:
        """One 2.5D sample: image (3C, H, W) float32 in [0, 1] and mask (H, W) uint8."""
        image, mask = self.volumes(case_id)
        x = sample_25d(image, plane, index)
        y = np.take(mask, index, axis=PLANE_AXIS[plane])
        if size is None:
            return x.astype(np.float32), np.asarray(y)
        return fit_to_size(x, size, dtype=np.float32), fit_to_size(np.asarray(y), size)


def open_cache(folder: str | os.PathLike) -> SliceCache:
    """A ``SliceCache`` on a folder written by ``build_cache``."""
    return SliceCache(folder)
