"""Segment new cases with trained runs, the way nnU-Net users run ``nnUNetv2_predict``.

    mstt-predict -r work/runs/<cohort>/unet-fold0-<hash> [more runs: an ensemble] \\
                 -i new_cases/ -o predictions/ [--tta paper] [--planes axial coronal sagittal]

The input folder is a cohort in the project layout (``cohort.csv``), an nnU-Net raw
dataset (``dataset.json`` with ``imagesTs/`` or ``imagesTr/``), the IBSI/STS layout
(``<case>/MR_T1_image.nii.gz``, as ``mstt_lib.dicom`` converts DICOM to), or a plain folder of
``<case>_0000.nii.gz`` (T1) and ``<case>_0001.nii.gz`` (T2) images. Each case is
registered (T1 onto T2), preprocessed as the runs were trained, segmented with the
runs' models averaged, and written on its native T2 grid (T1 for a T1-only model):
``<case>.nii.gz`` (0/1) and ``<case>_probability.nii.gz``. Cases already in the output
folder are skipped, so an interrupted run resumes; ``predictions.csv`` lists every
case with its status.

Input is read and checked as ``load_cohort`` checks a training cohort (one reader,
``mstt_lib.cohort.read_cases``): case ids must be unique plain names, and a case with a
missing, unreadable or truncated image, or NaN or +-Inf voxels, is listed in
``predictions.csv`` with its error while the other cases are segmented. Errors that stop
the whole run (a damaged run folder, an unwritable output folder) are one line on stderr
naming what failed and where, with exit status 1 (2 for a wrong command line);
``--debug`` shows the traceback instead.

``-i`` may also be a DICOM series folder (one case, read with ``mstt_lib.dicom``; for a T1 + T2
run, a folder with ``T1`` and ``T2`` series subfolders); ``--dicom-seg`` then also writes
``<case>_seg.dcm``, a DICOM SEG that references the source series and carries its patient and
study (``mstt_lib.dicom.seg``): it opens in 3D Slicer, OHIF or a PACS. Such files hold patient
identifiers and are never published by the book. ``-r`` also takes a parent folder of fold runs
(``mstt_lib.predictor.find_fold_runs``). The work is done by ``mstt_lib.predictor.Predictor``,
with the registration and preprocessing each run recorded (``plans.json``).
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from mstt_lib.infer import TTA_MODES
from mstt_lib.io import command_errors
from mstt_lib.predictor import STAGES, Predictor, RunFolderError, find_fold_runs, load_runs, read_input
from mstt_lib.slices import PLANES

__all__ = ["RunFolderError", "read_input", "load_runs", "predict_folder", "build_parser", "main", "STAGES"]

log = logging.getLogger(__name__)


def _run_folders(run_dirs: Sequence[str | os.PathLike]) -> list[Path]:
    """Each ``-r`` argument as run or ensemble folders: a folder that holds trained runs (and is
    none itself) stands for its fold runs or its ensemble (``find_fold_runs``)."""
    folders: list[Path] = []
    for folder in map(Path, run_dirs):
        marks = ("params.json", "model.pt", "ensemble.json")
        is_parent = folder.is_dir() and not any((folder / n).exists() for n in marks)
        is_parent = is_parent and any(
            (child / n).is_file() for child in folder.iterdir() if child.is_dir() for n in marks[1:]
        )
        folders.extend(find_fold_runs(folder) if is_parent else [folder])
    return folders


def predict_folder(
    run_dirs: Sequence[str | os.PathLike],
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    tta: str = "paper",
    planes: Sequence[str] = PLANES,
    device: str = "auto",
    batch_size: int = 16,
    workers: int = 2,
    progress: bool = True,
    dicom_seg: bool = False,
) -> pd.DataFrame:
    """Predict every case of ``input_dir`` into ``output_dir``; returns the status table."""
    if not run_dirs:
        raise ValueError("give at least one trained run folder")
    predictor = Predictor(tta, planes, device, batch_size, workers, progress)
    predictor.load_runs(_run_folders(run_dirs))
    return predictor.predict_folder(input_dir, output_dir, dicom_seg=dicom_seg)


def build_parser() -> argparse.ArgumentParser:
    """``mstt-predict``'s command line."""
    parser = argparse.ArgumentParser(
        prog="mstt-predict",
        description=__doc__.split("\n\n")[0],
        epilog="example: mstt-predict -r work/runs/sts-ibsi-t1 -i new_cases/ -o predictions/",
    )
    parser.add_argument(
        "-r",
        "--runs",
        nargs="+",
        required=True,
        help="trained run folders (several: their logits averaged), an ensemble folder "
        "(<model>-ensemble-<hash>: its threshold and post-processing applied), or a folder of "
        "runs (work/runs/<cohort>: its ensemble, else its fold runs)",
    )
    parser.add_argument(
        "-i",
        "--input",
        required=True,
        help="the cases: a cohort in the project layout, an nnU-Net raw dataset, the IBSI layout, "
        "<case>_0000.nii.gz (T1) and <case>_0001.nii.gz (T2) files, or one DICOM series folder",
    )
    parser.add_argument(
        "-o",
        "--output",
        required=True,
        help="where <case>.nii.gz, <case>_probability.nii.gz and predictions.csv go; "
        "cases already there from the same inputs, runs and settings are skipped",
    )
    parser.add_argument(
        "--tta",
        default="paper",
        choices=TTA_MODES,
        help="test-time augmentation: paper (identity, two flips, a 90-degree rotation), "
        "all8 (every flip and rotation), none (default: paper)",
    )
    parser.add_argument(
        "--planes",
        nargs="+",
        default=list(PLANES),
        choices=PLANES,
        help="slice planes whose predictions are averaged (default: all three)",
    )
    parser.add_argument(
        "--device", default="auto", help="auto (CUDA when present, else the CPU), cpu or cuda[:N]"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=16,
        help="slices read together, each with its TTA transforms; a pass over 16 x 256 x 256 "
        "pixels is split (default: 16)",
    )
    parser.add_argument("--workers", type=int, default=2, help="processes for registration (default: 2)")
    parser.add_argument(
        "--dicom-seg", action="store_true", help="DICOM input: also write <case>_seg.dcm (DICOM SEG)"
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point ``mstt-predict``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, format="%(message)s")
    with command_errors(parser.prog, args.debug):
        table = predict_folder(
            args.runs,
            args.input,
            args.output,
            args.tta,
            args.planes,
            args.device,
            args.batch_size,
            args.workers,
            dicom_seg=args.dicom_seg,
        )
    print(table.to_string(index=False))
    failed = table[~table["status"].str.startswith(("ok", "done"))]
    if len(failed):  # a message as the exit code: printed on stderr, exit status 1
        raise SystemExit(
            f"{parser.prog}: {len(failed)} case(s) were not segmented "
            f"(see {Path(args.output).resolve() / 'predictions.csv'})"
        )


if __name__ == "__main__":
    main()
