"""Tests for mstt_lib.io: atomic NIfTI writes and header checks that name the case and file."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import psutil
import pytest
from stop_helpers import start_as_from_a_terminal, wait_for

from mstt_lib.io import CaseFileError, case_id_problem, load_nifti, read_volume, save_nifti

# A 2 mm x 3 mm x 4 mm grid, LPS-oriented, not at the origin: nothing is left at its default.
AFFINE = np.array(
    [
        [-2.0, 0.0, 0.0, 10.0],
        [0.0, -3.0, 0.0, 20.0],
        [0.0, 0.0, 4.0, -30.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)


def _write_raw_nifti(path, header: nib.Nifti1Header, data: np.ndarray) -> None:
    """Write a single-file NIfTI byte for byte, so nibabel cannot tidy the header on save."""
    header = header.copy()
    header.set_data_dtype(data.dtype)
    header.set_data_shape(data.shape)
    header["vox_offset"] = 352
    with open(path, "wb") as f:
        f.write(header.binaryblock)
        f.write(b"\0" * 4)  # empty extension block
        f.write(data.tobytes(order="F"))


# ---------------------------------------------------------------------------
# save_nifti


@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.float32])
def test_save_nifti_round_trips_voxels_affine_and_dtype(tmp_path, dtype):
    data = np.arange(4 * 3 * 2, dtype=dtype).reshape(4, 3, 2)
    path = save_nifti(data, AFFINE, tmp_path / "vol.nii.gz")

    image = nib.load(path)
    assert image.get_data_dtype() == np.dtype(dtype)
    np.testing.assert_array_equal(np.asarray(image.dataobj), data)
    np.testing.assert_allclose(image.affine, AFFINE)
    np.testing.assert_allclose(image.header.get_zooms(), (2.0, 3.0, 4.0))
    assert int(image.header["qform_code"]) == 1 and int(image.header["sform_code"]) == 1


def test_save_nifti_casts_to_the_requested_dtype(tmp_path):
    data = np.array([0.0, 1.0, 2.0, 3.0]).reshape(2, 2, 1)
    path = save_nifti(data, AFFINE, tmp_path / "vol.nii.gz", dtype=np.uint8)
    image = nib.load(path)
    assert image.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(image.dataobj), [[[0], [1]], [[2], [3]]])


def test_save_nifti_leaves_only_the_target_in_the_folder(tmp_path):
    save_nifti(np.zeros((2, 2, 2), np.float32), AFFINE, tmp_path / "vol.nii.gz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vol.nii.gz"]


def test_save_nifti_creates_missing_parent_folders(tmp_path):
    target = tmp_path / "a" / "b" / "vol.nii.gz"
    save_nifti(np.zeros((2, 2, 2), np.float32), AFFINE, target)
    assert target.is_file()


def _failing_save(image, filename):
    """Write half a file, then fail, as a full disk or a killed process would."""
    with open(filename, "wb") as f:
        f.write(b"\x5c\x01\x00\x00 half a header")
    raise OSError("disk full (simulated)")


def test_save_nifti_failing_midway_leaves_no_target_and_no_temp_file(tmp_path, monkeypatch):
    monkeypatch.setattr(nib, "save", _failing_save)
    target = tmp_path / "vol.nii.gz"
    with pytest.raises(OSError, match="disk full"):
        save_nifti(np.zeros((2, 2, 2), np.float32), AFFINE, target)
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_save_nifti_failing_midway_keeps_the_previous_file_intact(tmp_path, monkeypatch):
    target = tmp_path / "vol.nii.gz"
    old = np.full((2, 2, 2), 7, np.int16)
    save_nifti(old, AFFINE, target)
    monkeypatch.setattr(nib, "save", _failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_nifti(np.zeros((2, 2, 2), np.int16), AFFINE, target)
    monkeypatch.undo()
    np.testing.assert_array_equal(np.asarray(nib.load(target).dataobj), old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vol.nii.gz"]


def test_save_nifti_gives_the_file_the_same_permissions_as_a_plain_write(tmp_path):
    plain = tmp_path / "plain.bin"
    plain.write_bytes(b"x")
    saved = save_nifti(np.zeros((2, 2, 2), np.float32), AFFINE, tmp_path / "vol.nii.gz")
    assert oct(saved.stat().st_mode & 0o777) == oct(plain.stat().st_mode & 0o777)


# ---------------------------------------------------------------------------
# load_nifti and read_volume


def test_load_nifti_opens_a_3d_volume_without_reading_it(tmp_path):
    data = np.arange(24, dtype=np.int16).reshape(4, 3, 2)
    path = save_nifti(data, AFFINE, tmp_path / "vol.nii.gz")
    image = load_nifti(path, "CASE_7")
    assert image.shape == (4, 3, 2)
    np.testing.assert_allclose(image.affine, AFFINE)
    volume = read_volume(image, "CASE_7")
    assert volume.dtype == np.float32
    np.testing.assert_array_equal(volume, data.astype(np.float32))


def test_load_nifti_missing_file_names_case_and_path(tmp_path):
    path = tmp_path / "absent.nii.gz"
    with pytest.raises(CaseFileError, match="file not found") as info:
        load_nifti(path, "CASE_7")
    assert "CASE_7" in str(info.value) and str(path) in str(info.value)
    assert info.value.case_id == "CASE_7" and info.value.path == str(path)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_load_nifti_garbage_bytes_names_case_and_path(tmp_path, suffix):
    path = tmp_path / f"garbage{suffix}"
    path.write_bytes(b"this is not a NIfTI file " * 40)
    with pytest.raises(CaseFileError, match="not a readable NIfTI") as info:
        load_nifti(path, "CASE_7")
    assert "CASE_7" in str(info.value) and str(path) in str(info.value)


@pytest.mark.parametrize("shape", [(4, 3), (4, 3, 2, 2), (4, 3, 2, 1)], ids=["2d", "4d", "4d-single"])
def test_load_nifti_rejects_a_volume_that_is_not_3d(tmp_path, shape):
    path = save_nifti(np.zeros(shape, np.float32), AFFINE, tmp_path / "vol.nii.gz")
    with pytest.raises(CaseFileError, match=r"expected a 3D volume") as info:
        load_nifti(path, "CASE_7")
    assert "CASE_7" in str(info.value) and str(path) in str(info.value)
    assert str(shape) in str(info.value)


def test_load_nifti_rejects_a_nan_spacing(tmp_path):
    header = nib.Nifti1Header()
    header.set_qform(np.eye(4), code=1)
    header["pixdim"][2] = np.nan
    path = tmp_path / "vol.nii"
    _write_raw_nifti(path, header, np.ones((4, 3, 2), np.float32))
    with pytest.raises(CaseFileError, match="degenerate voxel spacing") as info:
        load_nifti(path, "CASE_7")
    assert "CASE_7" in str(info.value) and str(path) in str(info.value)


def _zero_pixdim_header() -> nib.Nifti1Header:
    header = nib.Nifti1Header()
    header.set_qform(np.eye(4), code=1)
    header["pixdim"][2] = 0.0
    return header


def _zero_column_sform_header() -> nib.Nifti1Header:
    header = _zero_pixdim_header()
    header.set_sform(np.diag([1.0, 0.0, 1.0, 1.0]), code=1)
    return header


@pytest.mark.parametrize(
    "make_header", [_zero_pixdim_header, _zero_column_sform_header], ids=["pixdim", "sform"]
)
def test_load_nifti_rejects_a_zero_spacing(tmp_path, make_header):
    path = tmp_path / "vol.nii"
    _write_raw_nifti(path, make_header(), np.ones((4, 3, 2), np.float32))
    with pytest.raises(CaseFileError, match="spacing") as info:
        load_nifti(path, "CASE_7")
    assert "CASE_7" in str(info.value) and str(path) in str(info.value)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_read_volume_truncated_file_names_case_and_path(tmp_path, suffix):
    # Big enough that the header survives the cut and only the voxel data is short.
    data = np.random.default_rng(0).random((32, 32, 16)).astype(np.float32)
    path = save_nifti(data, AFFINE, tmp_path / f"vol{suffix}")
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])

    with pytest.raises(CaseFileError, match="truncated") as info:
        # an uncompressed file is measured against its header when opened; a compressed one
        # can only be found short when its voxels are read
        read_volume(load_nifti(path, "CASE_7"), "CASE_7")
    assert "CASE_7" in str(info.value) and str(path) in str(info.value)


def test_load_nifti_finds_a_short_uncompressed_file_before_reading_it(tmp_path):
    path = save_nifti(np.ones((32, 32, 16), np.float32), AFFINE, tmp_path / "vol.nii")
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(CaseFileError, match=r"truncated: the header describes \d+ bytes, the file holds"):
        load_nifti(path, "CASE_7")


@pytest.mark.parametrize("shape", [(0, 3, 2), (2**11, 2**10, 2**10)], ids=["empty", "huge"])
def test_load_nifti_refuses_an_empty_or_implausibly_large_volume(tmp_path, shape):
    header = nib.Nifti1Header()
    header.set_qform(AFFINE, code=1)
    header.set_data_dtype(np.uint8)
    header.set_data_shape(shape)
    path = tmp_path / "vol.nii"
    path.write_bytes(header.binaryblock + b"\0" * 4)
    with pytest.raises(CaseFileError, match="empty volume|implausibly large") as info:
        load_nifti(path, "CASE_7")
    assert str(path) in str(info.value)


def test_load_nifti_refuses_an_infinite_affine(tmp_path):
    header = nib.Nifti1Header()
    affine = AFFINE.copy()
    affine[0, 3] = np.inf
    header.set_sform(affine, code=1)
    path = tmp_path / "vol.nii"
    _write_raw_nifti(path, header, np.ones((4, 3, 2), np.float32))
    with pytest.raises(CaseFileError, match="NaN or infinite") as info:
        load_nifti(path, "CASE_7")
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "value, expected",
    [(np.nan, "1 NaN voxel"), (np.inf, "1 +Inf voxel"), (-np.inf, "1 -Inf voxel")],
    ids=["nan", "+inf", "-inf"],
)
@pytest.mark.parametrize("dtype", [np.float32, np.uint8], ids=["as-float", "as-mask"])
def test_read_volume_refuses_nan_and_inf_voxels(tmp_path, value, expected, dtype):
    data = np.ones((4, 3, 2), np.float32)
    data[1, 2, 1] = value
    path = save_nifti(data, AFFINE, tmp_path / "vol.nii.gz")
    with pytest.raises(CaseFileError, match=re.escape(expected)) as info:
        read_volume(load_nifti(path, "CASE_7"), "CASE_7", dtype)
    assert "CASE_7" in str(info.value) and str(path) in str(info.value)
    kept = read_volume(load_nifti(path, "CASE_7"), "CASE_7", np.float32, finite=False)
    assert kept.shape == (4, 3, 2) and np.isnan(kept).sum() + np.isinf(kept).sum() == 1


def test_a_float64_value_beyond_float32_is_refused_as_infinite(tmp_path):
    data = np.ones((4, 3, 2), np.float64)
    data[0, 0, 0] = 1e300
    path = save_nifti(data, AFFINE, tmp_path / "vol.nii.gz")
    with pytest.raises(CaseFileError, match=r"1 \+Inf voxel"):
        read_volume(load_nifti(path, "CASE_7"), "CASE_7")


@pytest.mark.parametrize("case_id", ["CASE_001", "sts-12", "a.b", "x"])
def test_plain_case_ids_are_accepted(case_id):
    assert case_id_problem(case_id) is None


@pytest.mark.parametrize(
    "case_id", ["", "  ", ".", "..", "../ESCAPED", "a/b", "/tmp/x", "a\\b", "a b", "caf\u00e9", "a\0b", None]
)
def test_case_ids_that_could_name_another_path_are_refused(case_id):
    assert case_id_problem(case_id)


def test_case_file_error_without_a_path_names_only_the_case():
    error = CaseFileError("CASE_7", None, "no mask path in the table")
    assert str(error) == "case CASE_7: no mask path in the table"
    assert error.path is None
    assert isinstance(error, ValueError)


@pytest.mark.parametrize(
    "scale, words",
    [(1e-6, "implausible voxel spacing"), (500.0, "implausible voxel spacing"), (90.0, "field of view")],
)
def test_load_nifti_refuses_spacings_and_extents_no_mri_has(tmp_path, scale, words):
    affine = np.diag([1.0, 1.0, scale, 1.0])
    path = save_nifti(np.ones((4, 3, 40), np.float32), affine, tmp_path / "vol.nii.gz")
    with pytest.raises(CaseFileError, match=words) as info:
        load_nifti(path, "CASE_7")
    assert str(path) in str(info.value)


# ---------------------------------------------------------------------------
# command_errors: how a command line ends when stopped

_STOPPABLE_COMMAND = """
import multiprocessing, pathlib, sys, time
from mstt_lib.io import command_errors

lock = multiprocessing.get_context("spawn").Lock()  # a semaphore the exit functions must release
with command_errors("demo"):
    started = pathlib.Path(sys.argv[1])
    if not started.exists():  # the first round waits to be stopped; the second ends at once
        started.touch()
        time.sleep(60)
"""


def _stop_a_shell_loop(tmp_path, signum: int, whole_group: bool):
    """Two rounds of a shell ``for`` loop around the command, stopped in the first."""
    script, started = tmp_path / "demo.py", tmp_path / "started"
    script.write_text(_STOPPABLE_COMMAND)
    loop = f'for round in 1 2; do "{sys.executable}" "{script}" "{started}"; echo "round $round: $?"; done'
    environment = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    pipes = dict(stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    shell = start_as_from_a_terminal(["bash", "-c", loop], env=environment, **pipes)
    try:
        wait_for(started.exists, shell, seconds=30)
        command = psutil.Process(shell.pid).children()[0]
        if whole_group:
            os.killpg(shell.pid, signum)
        else:
            command.send_signal(signum)
        output, _ = shell.communicate(timeout=30)
    finally:
        if shell.poll() is None:
            os.killpg(shell.pid, signal.SIGKILL)
    return shell.returncode, output


def test_ctrl_c_ends_a_command_in_one_line_and_stops_the_shell_loop_around_it(tmp_path):
    status, output = _stop_a_shell_loop(tmp_path, signal.SIGINT, whole_group=True)
    assert output.splitlines() == [  # nothing else: no traceback, no "leaked semaphore" warning
        "demo: interrupted; what it finished is kept, and the same command goes on from there"
    ]
    assert status == -signal.SIGINT  # the shell stopped with its command, before any round's echo


def test_sigterm_ends_a_command_in_one_line_with_status_143(tmp_path):
    status, output = _stop_a_shell_loop(tmp_path, signal.SIGTERM, whole_group=False)
    assert output.splitlines() == [
        "demo: stopped by SIGTERM; what it finished is kept, and the same command goes on from there",
        "round 1: 143",
        "round 2: 0",  # the shell was not stopped, so its loop goes on
    ]
    assert status == 0
