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
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import tempfile
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from mstt_lib.cohort import CaseProblem, CohortError, read_cases, read_cohort, validate_cases
from mstt_lib.devices import resolve_device
from mstt_lib.ensemble import resolve_runs
from mstt_lib.infer import (
    TTA_MODES,
    load_run,
    predict_volume,
    set_inference_threads,
    to_native,
    write_prediction,
)
from mstt_lib.io import atomic_path, command_errors, describe_error
from mstt_lib.postprocess import apply as postprocess
from mstt_lib.slices import PLANES, preprocess_read, read_case

__all__ = ["RunFolderError", "read_input", "load_runs", "predict_folder", "main", "STAGES"]

log = logging.getLogger(__name__)

STAGES = ("read", "register", "preprocess", "infer", "write")
"""The stages whose seconds ``predictions.csv`` lists per case (``seconds_<stage>``)."""


class RunFolderError(ValueError):
    """A trained run folder that cannot be used; the message names the folder or file."""


def read_input(
    folder: str | os.PathLike, modalities: Sequence[str] = ("T1", "T2"), check_voxels: bool = True
) -> tuple[pd.DataFrame, list[CaseProblem]]:
    """The cases of ``folder`` (layouts above) that can be segmented, and those that cannot.

    Table-level faults (duplicate, empty or unsafe case ids, an unreadable table) stop with
    a ``CohortError``: they leave no sensible set of cases to predict. A case whose own
    files are at fault is returned among the problems, to be listed in ``predictions.csv``.
    """
    table, problems = read_cases(folder, masks=False)
    if problems:
        raise CohortError(problems)
    cases, problems = validate_cases(
        table, [], tuple(modalities), skip_bad=True, check_voxels=check_voxels, progress=False, masks=False
    )
    return cases[["case_id", "t1", "t2"]], problems


def load_runs(run_dirs: Sequence[str | os.PathLike], device) -> list:
    """``load_run`` for each folder, with errors that name the folder and the file at fault."""
    loaded = []
    for run_dir in map(Path, run_dirs):
        if not run_dir.is_dir():
            raise RunFolderError(f"no trained run folder {run_dir}")
        for name in ("params.json", "preprocessing.json"):
            path = run_dir / name
            if not path.is_file():
                continue  # load_run names every missing file at once
            try:
                json.loads(path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                raise RunFolderError(f"{path}: not valid JSON (damaged or truncated?): {error}") from None
        model_file = run_dir / "model.pt"
        if model_file.is_file() and not zipfile.is_zipfile(model_file):
            raise RunFolderError(f"{model_file}: not a PyTorch model file (damaged or truncated?)")
        try:
            loaded.append(load_run(run_dir, device))
        except FileNotFoundError:
            raise
        except Exception as error:  # torch, json keys, mismatched weights: all name this run
            log.debug("loading %s failed", run_dir, exc_info=True)
            raise RunFolderError(
                f"{run_dir}: cannot load the trained run ({describe_error(error)})"
            ) from error
    return loaded


def _writable_folder(folder: Path) -> Path:
    """Create ``folder`` and make sure files can be written in it, before any work is done."""
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "the output path exists and is not a folder", str(folder))
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".mstt-write-test.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        raise OSError(
            error.errno, f"cannot write to the output folder ({error.strerror})", str(folder)
        ) from None
    return folder


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
    try:  # ensemble folders stand for their fold runs and carry their post-processing
        run_dirs, postprocessing = resolve_runs(run_dirs)
    except (OSError, ValueError) as error:
        raise RunFolderError(str(error)) from None
    loaded = load_runs(run_dirs, torch_device)
    output_dir = _writable_folder(Path(output_dir).resolve())  # resolved: stage files name absolute paths
    models = [model for model, _, _ in loaded]
    settings = loaded[0][2]
    if any(s != settings for _, _, s in loaded[1:]):
        raise ValueError("the runs were trained on differently preprocessed samples and cannot be averaged")
    size = int(loaded[0][1]["image_size"])

    cases, problems = read_input(input_dir, settings.modalities)
    done = {c for c in cases["case_id"] if (output_dir / f"{c}.nii.gz").is_file()}
    todo = cases[~cases["case_id"].isin(done)].assign(mask=None)
    status = {c: "done earlier" for c in done}
    status.update({p.case_id: f"error: {p}" for p in problems})
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
        todo = read_cohort(folder)[0] if (quality["status"] == "ok").any() else todo.iloc[:0]
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
            timings: dict = {}
            logits = predict_volume(
                models, case["image"], planes, tta, size, batch_size, torch_device, timings
            )
            clock.append(time.perf_counter())
            probability, mask = to_native(logits, case["affine"], case["native_shape"], case["native_affine"])
            meta = {
                "runs": [str(d) for d in run_dirs],
                "tta": tta,
                "planes": list(planes),
                "postprocessing": postprocessing,
                "seconds_per_plane": timings,
            }
            write_prediction(
                output_dir,
                case_id,
                probability,
                case["native_affine"],
                meta,
                mask=postprocess(mask, postprocessing),
            )
            clock.append(time.perf_counter())  # write: back to the native grid, and the files
        except Exception as error:  # one case's failure is its status; the other cases still run
            log.debug("case %s failed", case_id, exc_info=True)
            status[case_id] = f"error: {describe_error(error)}"
            continue
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
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
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
