"""DICOM MR series + RTSTRUCT -> NIfTI: seconds per patient and agreement with the IBSI export.

Converts the three TCIA Soft-tissue-Sarcoma patients of the shared data folder
(``sts-ibsi-dicom/``: STS_001, STS_002, STS_004) with ``mstt_lib.dicom.convert_patient`` and
compares each result with the IBSI NIfTI export of the same patient (``sts-ibsi-t1/``): Dice
of the GTV_Mass mask (target: 0.98 or more), the largest image voxel difference, and whether
the grids (shape and affine) are equal. Skips, saying so, when the shared data is absent.

    .venv/bin/python benchmarks/bench_dicom.py [--data /path/to/shared/data]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from _record import PeakMemory, record

from mstt_lib.dicom import convert_patient
from mstt_lib.params import shared_data_dir

CASES = ("STS_001", "STS_002", "STS_004")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=Path, default=None, help="the shared data folder (default: ../shared/data)"
    )
    args = parser.parse_args()
    shared = args.data or shared_data_dir()
    source, reference = shared / "sts-ibsi-dicom", shared / "sts-ibsi-t1"
    missing = [c for c in CASES if not (source / c).is_dir() or not (reference / c).is_dir()]
    if missing:
        print(
            f"skipped: the real STS data is absent ({', '.join(missing)} not under {source} and {reference})"
        )
        sys.exit(0)

    rows = []
    with tempfile.TemporaryDirectory() as out:
        for case_id in CASES:
            folder = source / case_id / "MR_T1"
            with PeakMemory() as memory:
                started = time.perf_counter()
                image_path, mask_path = convert_patient(
                    folder / "image", folder / "mask" / "RS.dcm", out, case_id
                )
                seconds = time.perf_counter() - started
            image, mask = nib.load(image_path), nib.load(mask_path)
            ref_image = nib.load(reference / case_id / "MR_T1_image.nii.gz")
            ref_mask = nib.load(reference / case_id / "MR_T1_mask.nii.gz")
            same_grid = image.shape == ref_image.shape and np.allclose(
                image.affine, ref_image.affine, atol=1e-4
            )
            if same_grid:
                ours, theirs = np.asarray(mask.dataobj) > 0, np.asarray(ref_mask.dataobj) > 0
                dice = 2 * (ours & theirs).sum() / (ours.sum() + theirs.sum())
                diff = float(np.abs(np.asarray(image.dataobj) - np.asarray(ref_image.dataobj)).max())
                dice_text, diff_text = f"{dice:.4f}", f"{diff:g}"
            else:
                dice_text = diff_text = "grids differ: not compared"
            slices = image.shape[2]
            rows += [
                (
                    f"{case_id}: conversion ({slices} slices)",
                    f"{seconds:.2f} s (peak {memory.peak_gib:.2f} GiB)",
                    "",
                ),
                (f"{case_id}: mask Dice vs IBSI", dice_text, "≥ 0.98"),
                (f"{case_id}: image max abs difference vs IBSI", diff_text, "0"),
                (f"{case_id}: same grid (shape, affine) as IBSI", "yes" if same_grid else "no", "yes"),
            ]
    record("DICOM + RTSTRUCT to NIfTI (TCIA STS, IBSI reference)", rows)


if __name__ == "__main__":
    main()
