"""Tests for mstt_lib.dicom: DICOM MR series + RTSTRUCT -> NIfTI image and mask.

Small synthetic series are written with pydicom into tmp_path (8 slices of 32 x 32, slices
stored in a shuffled file order with scrambled InstanceNumbers, every header carrying planted
patient identifiers); the real TCIA/IBSI cases in the shared data folder check the result
against the IBSI NIfTI export, and are skipped when that folder is absent.
"""

from __future__ import annotations

import gzip
import logging
import math
import os
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, RTStructureSetStorage, generate_uid

from mstt_lib import dicom
from mstt_lib.dicom import DicomError, convert_collection, convert_patient, rasterise
from mstt_lib.io import CaseFileError
from mstt_lib.params import shared_data_dir

# Identifiers planted in every synthetic header; none may reach an output, a log or an error.
PHI = {
    "PatientName": "Doe^Jane",
    "PatientBirthDate": "19700101",
    "PatientID": "MRN123456",
    "OtherPatientIDs": "OTHERID778899",
    "InstitutionName": "Saint Elsewhere Hospital",
    "AccessionNumber": "ACC55512",
    "ReferringPhysicianName": "Strange^Stephen",
}
SECRETS = [*PHI.values(), "MRN999999"]
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


# --------------------------------------------------------------------------- synthetic DICOM


@dataclass
class Synth:
    """A synthetic series as written: geometry in spatial (k) order, for independent checks."""

    folder: Path
    positions: np.ndarray  # (n, 3) ImagePositionPatient, LPS, in spatial order
    row_dir: np.ndarray  # direction of increasing column index
    col_dir: np.ndarray  # direction of increasing row index
    spacing: tuple[float, float]  # PixelSpacing: (between rows, between columns)
    pixels: np.ndarray  # (n, rows, cols) stored values, spatial order
    sop_uids: list[str]
    series_uid: str
    study_uid: str
    frame_uid: str

    def world(self, i, j, k) -> np.ndarray:
        """LPS position of voxel centre (column i, row j, slice k), from the headers alone."""
        return self.positions[k] + i * self.row_dir * self.spacing[1] + j * self.col_dir * self.spacing[0]


def _base(sop_class, sop_uid, modality: str, phi: dict) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = sop_class, sop_uid, modality
    for keyword, value in phi.items():
        setattr(ds, keyword, value)
    return ds


def _ds(values) -> list[str]:
    return [f"{float(v):.8g}" for v in values]


def make_series(
    folder: Path,
    n: int = 8,
    rows: int = 32,
    cols: int = 32,
    spacing=(1.0, 1.0),
    step: float = 2.0,
    orientation=(1, 0, 0, 0, 1, 0),
    origin=(-10.0, -20.0, 30.0),
    offsets=None,
    skip=(),
    slope: float | None = None,
    intercept: float | None = None,
    per_slice: dict | None = None,
    phi: dict | None = None,
    new_uid: Callable[[], str] = generate_uid,
) -> Synth:
    """Write an MR series; slice k lies at origin + offsets[k] * normal (default k * step).

    UIDs come from ``new_uid`` (pydicom's random ones by default; a seeded source writes the
    same bytes every time, which replaying a fuzzed input needs).
    """
    folder.mkdir(parents=True, exist_ok=True)
    phi = PHI if phi is None else phi
    iop = np.asarray(orientation, float)
    row_dir, col_dir = iop[:3] / np.linalg.norm(iop[:3]), iop[3:] / np.linalg.norm(iop[3:])
    normal = np.cross(row_dir, col_dir)
    offsets = np.arange(n) * step if offsets is None else np.asarray(offsets, float)
    positions = np.asarray(origin, float) + offsets[:, None] * normal
    r, c = np.mgrid[:rows, :cols]
    pixels = np.stack([k * 1024 + r * cols + c for k in range(n)]).astype(np.uint16)
    sop_uids = [new_uid() for _ in range(n)]
    synth = Synth(
        folder, positions, row_dir, col_dir, tuple(spacing), pixels, sop_uids, new_uid(), new_uid(), new_uid()
    )
    order = np.random.default_rng(n).permutation(n)  # file order and InstanceNumber say nothing
    for file_index, k in enumerate(order):
        if k in skip:
            continue
        ds = _base(MRImageStorage, synth.sop_uids[k], "MR", phi)
        ds.SeriesInstanceUID, ds.StudyInstanceUID = synth.series_uid, synth.study_uid
        ds.FrameOfReferenceUID = synth.frame_uid
        ds.InstanceNumber = int(n - file_index)
        ds.ImagePositionPatient = _ds(positions[k])
        ds.ImageOrientationPatient = _ds(iop)
        ds.PixelSpacing = _ds(spacing)
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        if slope is not None:
            ds.RescaleSlope, ds.RescaleIntercept = _ds([slope])[0], _ds([intercept or 0])[0]
        ds.PixelData = pixels[k].astype("<u2").tobytes()
        for keyword, value in (per_slice or {}).get(int(k), {}).items():
            setattr(ds, keyword, value)
        ds.save_as(folder / f"IM{file_index:04d}.dcm", enforce_file_format=True)
    return synth


def make_rtstruct(
    path: Path,
    synth: Synth,
    rois: dict[str, list[tuple[int, list[tuple[float, float]]]]],
    series_uid: str | None = None,
    frame_uid: str | None = None,
    phi: dict | None = None,
    k_shift: float = 0.0,
    new_uid: Callable[[], str] = generate_uid,
) -> Path:
    """An RTSTRUCT on ``synth``: per ROI name, (slice k, polygon in (i, j) voxel coordinates)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    phi = PHI if phi is None else phi
    ds = _base(RTStructureSetStorage, new_uid(), "RTSTRUCT", phi)
    ds.SeriesInstanceUID, ds.StudyInstanceUID = new_uid(), synth.study_uid
    ds.FrameOfReferenceUID = frame_uid or synth.frame_uid
    series = Dataset()
    series.SeriesInstanceUID = series_uid or synth.series_uid
    series.ContourImageSequence = Sequence([])
    study = Dataset()
    study.RTReferencedSeriesSequence = Sequence([series])
    frame = Dataset()
    frame.FrameOfReferenceUID = frame_uid or synth.frame_uid
    frame.RTReferencedStudySequence = Sequence([study])
    ds.ReferencedFrameOfReferenceSequence = Sequence([frame])
    ds.StructureSetROISequence, ds.ROIContourSequence = Sequence([]), Sequence([])
    step = synth.positions[1] - synth.positions[0]
    for number, (name, contours) in enumerate(rois.items(), start=1):
        roi = Dataset()
        roi.ROINumber, roi.ROIName = number, name
        roi.ReferencedFrameOfReferenceUID = frame_uid or synth.frame_uid
        ds.StructureSetROISequence.append(roi)
        item = Dataset()
        item.ReferencedROINumber = number
        item.ContourSequence = Sequence([])
        for k, polygon in contours:
            points = [synth.world(i, j, k) + k_shift * step for i, j in polygon]
            contour = Dataset()
            contour.ContourGeometricType = "CLOSED_PLANAR"
            contour.NumberOfContourPoints = len(points)
            contour.ContourData = _ds(np.ravel(points))
            image = Dataset()
            image.ReferencedSOPClassUID, image.ReferencedSOPInstanceUID = MRImageStorage, synth.sop_uids[k]
            contour.ContourImageSequence = Sequence([image])
            item.ContourSequence.append(contour)
        ds.ROIContourSequence.append(item)
    ds.save_as(path, enforce_file_format=True)
    return path


def square(i0, i1, j0, j1) -> list[tuple[float, float]]:
    return [(i0, j0), (i1, j0), (i1, j1), (i0, j1)]


def edges(i0, i1, j0, j1) -> list[tuple[float, float]]:
    """A square on pixel edges: exactly columns i0..i1-1 and rows j0..j1-1."""
    return square(i0 - 0.5, i1 - 0.5, j0 - 0.5, j1 - 0.5)


def block(shape, k, i0, i1, j0, j1) -> np.ndarray:
    out = np.zeros(shape, np.uint8)
    out[i0:i1, j0:j1, k] = 1
    return out


def case(tmp_path: Path, name: str = "STS_900", rois=None, **series_kwargs) -> tuple[Synth, Path, Path]:
    """A case in the shared layout: <name>/MR_T1/image/*.dcm and <name>/MR_T1/mask/RS.dcm."""
    folder = tmp_path / "dicom" / name / "MR_T1"
    synth = make_series(folder / "image", **series_kwargs)
    if rois is None:
        rois = {"GTV_Mass": [(k, edges(10, 20, 8, 16)) for k in (2, 3, 4)]}
    rs = make_rtstruct(folder / "mask" / "RS.dcm", synth, rois)
    return synth, folder / "image", rs


def read(path) -> tuple[np.ndarray, np.ndarray]:
    image = nib.load(path)
    return np.asarray(image.dataobj), image.affine


def written_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


# --------------------------------------------------------------------------- geometry and voxels


def _check_geometry(synth: Synth, image_path: Path) -> None:
    """Every voxel's world position and value against the DICOM headers, independently."""
    data, affine = read(image_path)
    n, rows, cols = synth.pixels.shape
    assert data.shape == (cols, rows, n) and data.dtype == np.float32
    for i, j, k in [(0, 0, 0), (cols - 1, 0, 0), (0, rows - 1, 0), (3, 5, n - 1), (cols - 1, rows - 1, 4)]:
        expected_lps = synth.world(i, j, k)
        ras = affine @ [i, j, k, 1]
        np.testing.assert_allclose(LPS_TO_RAS[:3, :3] @ ras[:3], expected_lps, atol=1e-4)
        assert data[i, j, k] == synth.pixels[k, j, i]


@pytest.mark.parametrize(
    "orientation",
    [
        (1, 0, 0, 0, 1, 0),  # axial, as the STS series
        (-1, 0, 0, 0, -1, 0),  # axial with both in-plane axes flipped against LPS
        (0, 1, 0, 0, 0, -1),  # sagittal
        (1, 0, 0, 0, 0, -1),  # coronal
        # oblique: axial rotated 30 degrees about x, then 20 degrees about z
        tuple(
            np.round(
                np.concatenate(
                    [
                        [math.cos(0.349), math.sin(0.349), 0],
                        [
                            -math.sin(0.349) * math.cos(0.524),
                            math.cos(0.349) * math.cos(0.524),
                            math.sin(0.524),
                        ],
                    ]
                ),
                7,
            )
        ),
    ],
    ids=["axial", "lps-flipped", "sagittal", "coronal", "oblique"],
)
def test_affine_maps_voxels_to_their_dicom_positions(tmp_path, orientation):
    synth, image_dir, rs = case(tmp_path, orientation=orientation, spacing=(0.7, 0.9), step=2.5)
    image, mask = convert_patient(image_dir, rs, tmp_path / "out")
    assert image == tmp_path / "out" / "STS_900" / "MR_T1_image.nii.gz"
    assert mask == tmp_path / "out" / "STS_900" / "MR_T1_mask.nii.gz"
    _check_geometry(synth, image)
    # the affine's columns: spacing along rows is PixelSpacing[1], down columns PixelSpacing[0]
    _, affine = read(image)
    np.testing.assert_allclose(np.linalg.norm(affine[:3, :3], axis=0), [0.9, 0.7, 2.5], atol=1e-5)
    # the square on pixel edges is exactly its voxels, whatever the orientation
    data, mask_affine = read(mask)
    np.testing.assert_array_equal(mask_affine, affine)
    expected = sum(block(data.shape, k, 10, 20, 8, 16) for k in (2, 3, 4))
    np.testing.assert_array_equal(data, expected)


def test_slices_sorted_along_the_normal_not_by_instance_number(tmp_path):
    # irregular-looking origin, descending file order; the k axis must go along +normal
    synth, image_dir, rs = case(tmp_path, origin=(5.5, -3.25, -881.3))
    image, _ = convert_patient(image_dir, rs, tmp_path / "out")
    data, affine = read(image)
    np.testing.assert_array_equal(data[0, 0, :], synth.pixels[:, 0, 0])
    assert affine[2, 2] > 0  # axial: +normal is +z (S) in both LPS and RAS


def test_nifti_types_and_clean_headers(tmp_path):
    _, image_dir, rs = case(tmp_path)
    image, mask = convert_patient(image_dir, rs, tmp_path / "out", case_id="public_7")
    assert image.parent.name == "public_7"
    for path, dtype in ((image, np.float32), (mask, np.uint8)):
        nifti = nib.load(path)
        assert nifti.get_data_dtype() == dtype
        header = nifti.header
        for text in ("descrip", "aux_file", "intent_name", "db_name"):
            assert header[text].item() == b""
        assert len(header.extensions) == 0
        assert int(header["qform_code"]) == 1 and int(header["sform_code"]) == 1
    assert set(np.unique(read(mask)[0])) == {0, 1}


def test_rescale_slope_and_intercept(tmp_path):
    synth, image_dir, rs = case(tmp_path, slope=0.5, intercept=-100)
    data, _ = read(convert_patient(image_dir, rs, tmp_path / "out")[0])
    np.testing.assert_array_equal(data[:, :, 3], synth.pixels[3].T * 0.5 - 100)


def test_case_id_defaults_to_the_case_folder(tmp_path):
    _, image_dir, rs = case(tmp_path, name="STS_123")
    image, _ = convert_patient(image_dir, rs, tmp_path / "out")
    assert image.parent.name == "STS_123"


# --------------------------------------------------------------------------- rasterisation


def test_hole_and_several_contours_on_one_slice(tmp_path):
    rois = {
        "GTV_Mass": [
            (3, edges(4, 24, 4, 24)),  # outer
            (3, edges(10, 14, 9, 15)),  # inside it: a hole
            (3, edges(26, 30, 26, 30)),  # a second, separate piece
            (5, edges(2, 6, 2, 6)),
        ]
    }
    _, image_dir, rs = case(tmp_path, rois=rois)
    data, _ = read(convert_patient(image_dir, rs, tmp_path / "out")[1])
    expected = block(data.shape, 3, 4, 24, 4, 24) - block(data.shape, 3, 10, 14, 9, 15)
    expected += block(data.shape, 3, 26, 30, 26, 30) + block(data.shape, 5, 2, 6, 2, 6)
    np.testing.assert_array_equal(data, expected)


def test_rasterise_is_even_odd_and_half_open_on_pixel_centres():
    # vertices on pixel centres: left/lower edges in, right/upper edges out
    np.testing.assert_array_equal(
        np.argwhere(rasterise([np.array(square(2, 5, 1, 3))], (8, 8))).min(0), [2, 1]
    )
    np.testing.assert_array_equal(
        np.argwhere(rasterise([np.array(square(2, 5, 1, 3))], (8, 8))).max(0), [4, 2]
    )
    # two squares sharing an edge tile without overlap: their XOR is their union
    a, b = np.array(square(1, 4, 1, 6)), np.array(square(4, 7, 1, 6))
    both = rasterise([a, b], (8, 8))
    np.testing.assert_array_equal(both, rasterise([a], (8, 8)) | rasterise([b], (8, 8)))
    assert both.sum() == 6 * 5
    # a polygon reaching outside the slice is clipped, not wrapped
    clipped = rasterise([np.array(square(-3.5, 2.5, -3.5, 9.5))], (8, 8))
    assert clipped.sum() == 3 * 8 and clipped[:3].all()


def test_rasterise_agrees_with_skimage_off_the_grid():
    from skimage.draw import polygon

    rng = np.random.default_rng(0)
    for _ in range(20):
        angles = np.sort(rng.uniform(0, 2 * np.pi, 12))
        radius = rng.uniform(3, 14, 12)
        centre = rng.uniform(10, 30, 2)
        vertices = centre + radius[:, None] * np.c_[np.cos(angles), np.sin(angles)] + 0.123
        expected = np.zeros((40, 40), bool)
        rr, cc = polygon(vertices[:, 0], vertices[:, 1], expected.shape)
        expected[rr, cc] = True
        np.testing.assert_array_equal(rasterise([vertices], (40, 40)), expected)


@pytest.mark.parametrize(
    "k_shift", [0.1, -0.2, 0.4], ids=["by-position", "by-position-below", "by-reference"]
)
def test_contour_matched_to_its_slice_with_a_tolerance(tmp_path, k_shift):
    # within a quarter slice the position decides; further off, the contour's image reference
    folder = tmp_path / "dicom" / "STS_900" / "MR_T1"
    synth = make_series(folder / "image")
    rois = {"GTV_Mass": [(4, edges(3, 6, 3, 6))]}
    rs = make_rtstruct(folder / "mask" / "RS.dcm", synth, rois, k_shift=k_shift)
    data, _ = read(convert_patient(folder / "image", rs, tmp_path / "out")[1])
    np.testing.assert_array_equal(data, block(data.shape, 4, 3, 6, 3, 6))


def test_contour_between_slices_is_an_error(tmp_path):
    folder = tmp_path / "dicom" / "STS_900" / "MR_T1"
    synth = make_series(folder / "image")
    rs = make_rtstruct(folder / "mask" / "RS.dcm", synth, {"GTV_Mass": [(4, edges(3, 6, 3, 6))]}, k_shift=0.5)
    # drop the image reference that would otherwise place it
    import pydicom

    ds = pydicom.dcmread(rs)
    del ds.ROIContourSequence[0].ContourSequence[0].ContourImageSequence
    ds.save_as(rs)
    with pytest.raises(DicomError, match="between slices") as error:
        convert_patient(folder / "image", rs, tmp_path / "out")
    assert str(rs) in str(error.value)


# --------------------------------------------------------------------------- ROI choice


@pytest.mark.parametrize("stored", ["GTV_Mass", " gtv_mass ", "GTV_MASS", "GTV_Mass_MR_T1"])
def test_roi_matched_by_name(tmp_path, stored):
    rois = {"Skin": [(1, edges(0, 30, 0, 30))], stored: [(2, edges(10, 12, 10, 12))]}
    _, image_dir, rs = case(tmp_path, rois=rois)
    data, _ = read(convert_patient(image_dir, rs, tmp_path / "out")[1])
    assert data.sum() == 4 and data[10:12, 10:12, 2].all()


def test_missing_roi_lists_the_rois_found(tmp_path):
    rois = {"Skin": [(1, edges(0, 30, 0, 30))], "GTV_Edema": [(2, edges(10, 12, 10, 12))]}
    _, image_dir, rs = case(tmp_path, rois=rois)
    with pytest.raises(DicomError, match="no ROI named 'GTV_Mass'; ROIs found: 'Skin', 'GTV_Edema'"):
        convert_patient(image_dir, rs, tmp_path / "out")
    assert written_files(tmp_path / "out") == []


def test_roi_can_be_chosen(tmp_path):
    rois = {"Skin": [(1, edges(0, 30, 0, 30))], "GTV_Mass": [(2, edges(10, 12, 10, 12))]}
    _, image_dir, rs = case(tmp_path, rois=rois)
    data, _ = read(convert_patient(image_dir, rs, tmp_path / "out", roi="skin")[1])
    assert data.sum() == 30 * 30


# --------------------------------------------------------------------------- bad input


def _bad_cases():
    """(label, build) pairs; build(tmp) returns (series_dir, rtstruct, expected message part, named path)."""

    def missing_slice(t):
        _, d, rs = case(t, skip=(5,))
        return d, rs, r"missing slice: a gap of 4\.00 mm between positions 38\.00 and 42\.00 mm", d

    def uneven_steps(t):
        _, d, rs = case(t, offsets=[0, 2, 4, 6, 8.3, 10.3, 12.3, 14.3])
        return d, rs, "inconsistent slice spacing: step 2.300 mm", d

    def pixel_spacing(t):
        _, d, rs = case(t, per_slice={3: {"PixelSpacing": ["1.2", "1.0"]}})
        return d, rs, "PixelSpacing differs", d

    def orientation(t):
        _, d, rs = case(t, per_slice={6: {"ImageOrientationPatient": _ds([1, 0, 0, 0, 0.9, 0.43589])}})
        return d, rs, "ImageOrientationPatient differs", d

    def matrix(t):
        _, d, rs = case(t, per_slice={2: {"Columns": 30}})
        return d, rs, r"matrix \(32, 30\) differs", d

    def other_series(t):
        folder = t / "dicom" / "STS_900" / "MR_T1"
        synth = make_series(folder / "image")
        rs = make_rtstruct(
            folder / "mask" / "RS.dcm", synth, {"GTV_Mass": [(2, edges(1, 3, 1, 3))]}, generate_uid()
        )
        return folder / "image", rs, "references another series", rs

    def other_frame(t):
        folder = t / "dicom" / "STS_900" / "MR_T1"
        synth = make_series(folder / "image")
        rois = {"GTV_Mass": [(2, edges(1, 3, 1, 3))]}
        rs = make_rtstruct(folder / "mask" / "RS.dcm", synth, rois, frame_uid=generate_uid())
        return folder / "image", rs, "another frame of reference", rs

    def mixed_patient(t):
        synth, d, rs = case(t, per_slice={5: {"PatientID": "MRN999999"}})
        odd = next(p for p in d.iterdir() if _sop(p) == synth.sop_uids[5])
        return d, rs, "mixed patients or studies .*different PatientID", odd

    def mixed_study(t):
        synth, d, rs = case(t, per_slice={1: {"StudyInstanceUID": generate_uid()}})
        odd = next(p for p in d.iterdir() if _sop(p) == synth.sop_uids[1])
        return d, rs, "different StudyInstanceUID", odd

    def rtstruct_of_another_patient(t):
        folder = t / "dicom" / "STS_900" / "MR_T1"
        synth = make_series(folder / "image")
        rois = {"GTV_Mass": [(2, edges(1, 3, 1, 3))]}
        rs = make_rtstruct(folder / "mask" / "RS.dcm", synth, rois, phi={**PHI, "PatientID": "MRN999999"})
        return folder / "image", rs, "RTSTRUCT has a different PatientID", rs

    def empty_folder(t):
        _, d, rs = case(t)
        empty = t / "empty"
        empty.mkdir()
        return empty, rs, "no DICOM files", empty

    def only_rtstruct(t):
        _, d, rs = case(t)
        return rs.parent, rs, "no DICOM image files", rs.parent

    def not_dicom(t):
        _, d, rs = case(t)
        stray = d / "notes.txt"
        stray.write_text("Doe^Jane MRN123456 scanned on 19700101\n")
        return d, rs, "not a DICOM file", stray

    def empty_file(t):
        _, d, rs = case(t)
        (d / "zero.dcm").write_bytes(b"")
        return d, rs, "not a DICOM file", d / "zero.dcm"

    def rtstruct_not_dicom(t):
        _, d, rs = case(t)
        rs.write_bytes(b"\0" * 50)
        return d, rs, "not a DICOM file", rs

    return [
        (f.__name__, f)
        for f in (
            missing_slice,
            uneven_steps,
            pixel_spacing,
            orientation,
            matrix,
            other_series,
            other_frame,
            mixed_patient,
            mixed_study,
            rtstruct_of_another_patient,
            empty_folder,
            only_rtstruct,
            not_dicom,
            empty_file,
            rtstruct_not_dicom,
        )
    ]


def _sop(path: Path) -> str:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


BAD = _bad_cases()


@pytest.mark.parametrize("build", [b for _, b in BAD], ids=[label for label, _ in BAD])
def test_bad_input_is_a_clear_error_and_writes_nothing(tmp_path, build, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    series_dir, rs, message, named = build(tmp_path)
    out = tmp_path / "out"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(DicomError, match=message) as error:
            convert_patient(series_dir, rs, out, case_id="STS_900")
    exc = error.value
    assert isinstance(exc, CaseFileError)
    assert exc.case_id == "STS_900" and str(exc).startswith("case STS_900: ")
    assert str(named) in str(exc)
    assert exc.__cause__ is None and (
        exc.__context__ is None or exc.__suppress_context__
    )  # no library traceback
    assert written_files(out) == []
    captured = capsys.readouterr()
    text = "\n".join([str(exc), caplog.text, captured.out, captured.err, *(str(w.message) for w in caught)])
    for secret in SECRETS:
        assert secret not in text
    # UIDs are identifiers too: never shown
    assert "1.2.826.0.1.3680043" not in str(exc)


def test_several_series_in_one_folder_take_the_referenced_one(tmp_path):
    folder = tmp_path / "dicom" / "STS_900" / "MR_T1"
    wanted = make_series(folder / "image")
    make_series(folder / "image2", step=3.0)
    for p in (folder / "image2").iterdir():
        p.rename(folder / "image" / f"other_{p.name}")
    rs = make_rtstruct(folder / "mask" / "RS.dcm", wanted, {"GTV_Mass": [(2, edges(1, 3, 1, 3))]})
    image, _ = convert_patient(folder / "image", rs, tmp_path / "out")
    _check_geometry(wanted, image)


# --------------------------------------------------------------------------- a collection


def test_collection_shared_and_nested_layouts_resumable(tmp_path):
    root = tmp_path / "dicom"
    case(tmp_path, name="STS_900")
    # second layout: the series and the RTSTRUCT anywhere below the case folder
    nested = root / "STS_901"
    synth = make_series(nested / "study" / "series_5")
    make_rtstruct(nested / "study" / "rt" / "1-1.dcm", synth, {"gtv_mass": [(1, edges(5, 9, 5, 9))]})
    out = tmp_path / "nifti"

    table = convert_collection(root, out, progress=False)
    assert list(table.columns) == ["case_id", "image", "mask", "roi", "seconds", "status"]
    assert list(table.case_id) == ["STS_900", "STS_901"]
    assert list(table.status) == ["converted", "converted"]
    assert list(table.roi) == ["GTV_Mass", "gtv_mass"]
    _check_geometry(synth, out / "STS_901" / "MR_T1_image.nii.gz")
    mask, _ = read(out / "STS_901" / "MR_T1_mask.nii.gz")
    assert mask.sum() == 16
    written = pd.read_csv(out / dicom.TABLE_FILE)
    assert list(written.image) == ["STS_900/MR_T1_image.nii.gz", "STS_901/MR_T1_image.nii.gz"]

    # the project's case-table reader takes the folder as the IBSI layout
    from mstt_lib.cohort import is_ibsi_layout, read_ibsi

    assert is_ibsi_layout(out)
    cases, problems = read_ibsi(out)
    assert list(cases.case_id) == ["STS_900", "STS_901"] and not problems

    again = convert_collection(root, out, progress=False)
    assert list(again.status) == ["up to date", "up to date"]
    assert list(again.roi) == ["GTV_Mass", "gtv_mass"]

    # a changed input converts that case again
    later = time.time() + 5
    touched = next((nested / "study" / "series_5").iterdir())
    os.utime(touched, (later, later))
    third = convert_collection(root, out, progress=False)
    assert list(third.status) == ["up to date", "converted"]

    # so does an input whose time went back (a copy that keeps the original times: cp -p, rsync -a)
    os.utime(touched, (later - 3600, later - 3600))
    assert list(convert_collection(root, out, progress=False).status) == ["up to date", "converted"]
    # and another ROI asked for
    with pytest.raises(DicomError, match="ROI"):
        convert_collection(root, out, roi="no_such_roi", progress=False)
    # a case no longer in the collection: its converted folder goes, so no reader lists it
    shutil.rmtree(root / "STS_900")
    fourth = convert_collection(root, out, progress=False)
    assert list(fourth.case_id) == ["STS_901"] and not (out / "STS_900").exists()
    assert list(read_ibsi(out)[0].case_id) == ["STS_901"]


def test_collection_stops_on_a_bad_case_or_skips_it(tmp_path):
    case(tmp_path, name="STS_900")
    case(tmp_path, name="STS_901", skip=(3,))
    with pytest.raises(DicomError, match="case STS_901: missing slice"):
        convert_collection(tmp_path / "dicom", tmp_path / "out", progress=False)
    table = convert_collection(tmp_path / "dicom", tmp_path / "out2", progress=False, skip_bad_cases=True)
    assert list(table.status.str[:7]) == ["convert", "error: "]
    assert not (tmp_path / "out2" / "STS_901").exists()


def test_no_identifier_reaches_outputs_logs_or_messages(tmp_path, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    case(
        tmp_path,
        name="STS_900",
        rois={"GTV_Mass_MR_T1": [(3, edges(4, 24, 4, 24)), (3, edges(8, 12, 8, 12))]},
    )
    nested = tmp_path / "dicom" / "STS_901"
    synth = make_series(nested / "a")
    make_rtstruct(nested / "b" / "RS.dcm", synth, {"GTV_Mass": [(1, edges(5, 9, 5, 9))]})
    out = tmp_path / "nifti"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = convert_collection(tmp_path / "dicom", out, progress=True)
        convert_collection(tmp_path / "dicom", out, progress=True)
    assert len(table) == 2
    blobs = []
    for path in written_files(out):
        raw = path.read_bytes()
        blobs.append(gzip.decompress(raw) if path.suffix == ".gz" else raw)
    assert len(blobs) == 7  # two NIfTI pairs, their two conversion records, the table
    captured = capsys.readouterr()
    text = "\n".join(
        [caplog.text, captured.out, captured.err, table.to_csv(), *(str(w.message) for w in caught)]
    )
    for secret in SECRETS:
        assert secret not in text
        assert all(secret.encode() not in blob for blob in blobs)


def test_shared_data_dir_env_override(monkeypatch, tmp_path):
    monkeypatch.setenv("MSTT_SHARED_DATA", str(tmp_path))
    assert shared_data_dir() == tmp_path
    monkeypatch.delenv("MSTT_SHARED_DATA")
    assert shared_data_dir().parts[-2:] == ("shared", "data")


# --------------------------------------------------------------------------- real data (TCIA / IBSI)

REAL_CASES = ("STS_001", "STS_002", "STS_004")


@pytest.fixture(scope="module")
def real_conversion(tmp_path_factory):
    shared = shared_data_dir()
    source = shared / "sts-ibsi-dicom"
    if not all((source / c).is_dir() for c in REAL_CASES) or not (shared / "sts-ibsi-t1").is_dir():
        pytest.skip(f"real STS DICOM data absent: {source} (set MSTT_SHARED_DATA to the shared data folder)")
    out = tmp_path_factory.mktemp("sts")
    table = convert_collection(source, out, progress=False)
    return shared / "sts-ibsi-t1", table.set_index("case_id")


@pytest.mark.parametrize("case_id", REAL_CASES)
def test_real_case_matches_the_ibsi_export(real_conversion, case_id):
    reference, table = real_conversion
    row = table.loc[case_id]
    assert row.roi == "GTV_Mass_MR_T1"
    image, mask = nib.load(row.image), nib.load(row["mask"])
    ref_image = nib.load(reference / case_id / "MR_T1_image.nii.gz")
    ref_mask = nib.load(reference / case_id / "MR_T1_mask.nii.gz")
    # same grid: shape and world geometry (compare arrays directly only then)
    assert image.shape == ref_image.shape == mask.shape == ref_mask.shape
    np.testing.assert_allclose(image.affine, ref_image.affine, atol=1e-4)
    np.testing.assert_allclose(mask.affine, ref_mask.affine, atol=1e-4)
    corners = np.array([[0, 0, 0, 1], [*np.subtract(image.shape, 1), 1]]).T
    np.testing.assert_allclose(image.affine @ corners, ref_image.affine @ corners, atol=1e-3)
    # voxels: the image equals the export (max abs difference 0 on these cases)
    ours = np.asarray(image.dataobj)
    assert np.abs(ours - np.asarray(ref_image.dataobj)).max() <= 1e-4
    m, r = np.asarray(mask.dataobj) > 0, np.asarray(ref_mask.dataobj) > 0
    dice = 2 * (m & r).sum() / (m.sum() + r.sum())
    assert dice >= 0.98, f"{case_id}: Dice {dice:.4f} against the IBSI mask"
