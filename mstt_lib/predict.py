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
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from mstt_lib.cohort import is_ibsi_layout, read_cohort, read_ibsi
from mstt_lib.infer import (
    TTA_MODES,
    load_run,
    predict_volume,
    set_inference_threads,
    to_native,
    write_prediction,
)
from mstt_lib.io import CaseFileError, atomic_path
from mstt_lib.slices import PLANES, preprocess_read, read_case
from mstt_lib.train import resolve_device

__all__ = ["read_input", "predict_folder", "main", "STAGES"]

STAGES = ("read", "register", "preprocess", "infer", "write")
"""The stages whose seconds ``predictions.csv`` lists per case (``seconds_<stage>``)."""


def read_input(folder: str | os.PathLike, modalities: Sequence[str] = ("T1", "T2")) -> pd.DataFrame:
    """case_id and image paths (``t1``, ``t2``) of the cases in ``folder`` (layouts above)."""
    folder = Path(folder)
    if (folder / "cohort.csv").is_file():
        cases, _ = read_cohort(folder)
        return cases[["case_id", "t1", "t2"]]
    if is_ibsi_layout(folder):
        cases, _ = read_ibsi(folder)
        return cases[["case_id", "t1", "t2"]]
    channel_of = {m: i for i, m in enumerate(("T1", "T2"))}
    images = folder
    if (folder / "dataset.json").is_file():
        dataset = json.loads((folder / "dataset.json").read_text())
        channel_of = {str(v).upper(): int(k) for k, v in dataset.get("channel_names", {}).items()}
        images = folder / "imagesTs" if (folder / "imagesTs").is_dir() else folder / "imagesTr"
    case_ids = sorted({p.name[: -len("_0000.nii.gz")] for p in images.glob("*_0000.nii.gz")})
    if not case_ids:
        raise FileNotFoundError(
            f"no cases in {folder}: expected cohort.csv, dataset.json or <case>_0000.nii.gz files"
        )
    rows = []
    for case_id in case_ids:
        row = {"case_id": case_id, "t1": None, "t2": None}
        for modality in modalities:
            path = images / f"{case_id}_{channel_of[modality]:04d}.nii.gz"
            row[modality.lower()] = str(path)  # a missing file is reported with its case
        rows.append(row)
    return pd.DataFrame(rows)


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
) -> pd.DataFrame:
    """Predict every case of ``input_dir`` into ``output_dir``; returns the status table."""
    from mstt_lib.registration import RegistrationSettings, register_cohort

    if not run_dirs:
        raise ValueError("give at least one trained run folder")
    torch_device = resolve_device(device)
    loaded = [load_run(d, torch_device) for d in run_dirs]
    models = [model for model, _, _ in loaded]
    settings = loaded[0][2]
    if any(s != settings for _, _, s in loaded[1:]):
        raise ValueError("the runs were trained on differently preprocessed samples and cannot be averaged")
    size = int(loaded[0][1]["image_size"])
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    cases = read_input(input_dir, settings.modalities)
    done = {c for c in cases["case_id"] if (output_dir / f"{c}.nii.gz").is_file()}
    todo = cases[~cases["case_id"].isin(done)].assign(mask=None)
    status = {c: "done earlier" for c in done}
    reference = "t2" if "T2" in settings.modalities else "t1"
    native = dict(zip(todo["case_id"], todo[reference], strict=True))
    register_seconds = 0.0  # a T1-only (or T2-only) run needs no registration
    if len(todo) and {"T1", "T2"} <= set(settings.modalities):
        folder = output_dir / ".registration"
        started = time.perf_counter()
        quality = register_cohort(todo, folder, RegistrationSettings(), workers=workers, progress=progress)
        register_seconds = (time.perf_counter() - started) / len(todo)  # the cohort's wall time, shared
        status.update(
            {r.case_id: f"registration {r.status}" for r in quality.itertuples() if r.status != "ok"}
        )
        todo = read_cohort(folder)[0] if (folder / "cohort.csv").is_file() else todo.iloc[:0]
    seconds: dict[str, dict[str, float]] = {}
    set_inference_threads()
    for row in tqdm(todo.to_dict("records"), desc="predicting", unit="case", disable=not progress):
        case_id = row["case_id"]
        clock = [time.perf_counter()]  # the end of each stage, in order
        try:
            read = read_case(pd.Series({**row, "mask": None, "native": native[case_id]}), settings)
            clock.append(time.perf_counter())
            case = preprocess_read(read, settings)
            clock.append(time.perf_counter())
        except CaseFileError as error:
            status[case_id] = f"error: {error}"
            continue
        timings: dict = {}
        logits = predict_volume(models, case["image"], planes, tta, size, batch_size, torch_device, timings)
        clock.append(time.perf_counter())
        probability, _ = to_native(logits, case["affine"], case["native_shape"], case["native_affine"])
        meta = {
            "runs": [str(d) for d in run_dirs],
            "tta": tta,
            "planes": list(planes),
            "seconds_per_plane": timings,
        }
        write_prediction(output_dir, case_id, probability, case["native_affine"], meta)
        clock.append(time.perf_counter())  # write: back to the native grid, and the files
        read_s, preprocess_s, infer_s, write_s = np.diff(clock)
        stages = dict(
            read=read_s, register=register_seconds, preprocess=preprocess_s, infer=infer_s, write=write_s
        )
        seconds[case_id] = {stage: round(float(value), 3) for stage, value in stages.items()}
        status[case_id] = f"ok ({sum(stages.values()):.1f} s)"
    table = pd.DataFrame(sorted(status.items()), columns=["case_id", "status"])
    for stage in STAGES:  # seconds per stage of the cases segmented now (empty for the others)
        table[f"seconds_{stage}"] = [seconds.get(c, {}).get(stage) for c in table["case_id"]]
    with atomic_path(output_dir / "predictions.csv") as tmp:
        table.to_csv(tmp, index=False)
    return table


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point ``mstt-predict``."""
    parser = argparse.ArgumentParser(prog="mstt-predict", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "-r", "--runs", nargs="+", required=True, help="trained run folders (several: ensemble)"
    )
    parser.add_argument("-i", "--input", required=True, help="folder of cases to segment")
    parser.add_argument("-o", "--output", required=True, help="folder for the NIfTI masks")
    parser.add_argument("--tta", default="paper", choices=TTA_MODES)
    parser.add_argument("--planes", nargs="+", default=list(PLANES), choices=PLANES)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2, help="processes for registration")
    args = parser.parse_args(argv)
    table = predict_folder(
        args.runs, args.input, args.output, args.tta, args.planes, args.device, args.batch_size, args.workers
    )
    print(table.to_string(index=False))
    failed = table[~table["status"].str.startswith(("ok", "done"))]
    if len(failed):
        raise SystemExit(
            f"{len(failed)} case(s) were not segmented (see {Path(args.output) / 'predictions.csv'})"
        )


if __name__ == "__main__":
    main()
