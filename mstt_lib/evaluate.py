"""Cross-validation evaluation of one trained run: predict its validation cases, score them.

For each case the run's model segments the preprocessed volume through
``mstt_lib.predictor.Predictor`` (as ``mstt-predict`` does: every slice of the
chosen planes, test-time augmentation, plane fusion), the prediction is written on the
native T2 grid (``<case>.nii.gz`` and ``<case>_probability.nii.gz``), and one row of
``metrics.csv`` holds the metrics of ``mstt_lib.metrics`` on the native grid plus the
Dice on the isotropic grid (``dice_iso``, where the authors computed theirs) and the
seconds spent per plane. Cases already scored are skipped, so a stopped evaluation resumes;
rows scored by an older inference (``inference`` column below ``INFERENCE_VERSION``) are
scored again.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from mstt_lib.ensemble import weights_stamp
from mstt_lib.infer import INFERENCE_VERSION, set_inference_threads, write_prediction
from mstt_lib.io import atomic_path, load_nifti, read_volume
from mstt_lib.metrics import dice, evaluate_case
from mstt_lib.slices import PLANES, SliceCache

__all__ = ["evaluate_run", "METRICS_FILE", "INFERENCE_VERSION"]

METRICS_FILE = "metrics.csv"


def evaluate_run(
    run_dir: str | os.PathLike | Sequence[str | os.PathLike],
    cache: SliceCache,
    cases: pd.DataFrame,
    out_dir: str | os.PathLike,
    tta: str = "paper",
    planes: Sequence[str] = PLANES,
    batch_size: int = 16,
    device: str = "cpu",
    progress: bool = True,
) -> pd.DataFrame:
    """Score a run on ``cases`` (case_id and ``native_mask``: the mask on its native grid).

    Several run folders are scored as one model, their logits averaged as ``mstt-predict``
    averages them.
    """
    run_dirs = [run_dir] if isinstance(run_dir, (str, os.PathLike)) else list(run_dir)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics_file = out_dir / METRICS_FILE
    text = {"case_id": str, "weights": str}  # "001" or a digest of digits would read as numbers
    rows = pd.read_csv(metrics_file, dtype=text).to_dict("records") if metrics_file.is_file() else []
    weights = weights_stamp(run_dirs)
    # older inference, or weights retrained since (a continued run keeps its folder): again
    rows = [r for r in rows if r.get("inference") == INFERENCE_VERSION and r.get("weights") == weights]
    done = {r["case_id"] for r in rows}
    todo = [r for r in cases.to_dict("records") if r["case_id"] not in done]
    if todo:  # the models load only for cases not scored yet: a rerun of a chapter reads the table
        from mstt_lib.predictor import Predictor

        predictor = Predictor(tta, planes, device, batch_size, progress=progress).load_runs(run_dirs)
        set_inference_threads()
    name = Path(run_dirs[0]).name + (f" and {len(run_dirs) - 1} more" if len(run_dirs) > 1 else "")
    # no bar when every case is scored already: a rerun in JupyterLab shows no empty "0case" bars
    for row in tqdm(todo, desc=f"evaluating {name}", unit="case", disable=not (progress and todo)):
        case_id = row["case_id"]
        meta = cache.meta(case_id)
        image, mask_iso = cache.volumes(case_id)
        timings: dict = {}
        started = time.perf_counter()
        logits = predictor.logits(np.asarray(image), timings)
        seconds = time.perf_counter() - started
        probability, prediction = predictor.to_grid(
            logits, meta["affine"], meta["native_shape"], meta["native_affine"]
        )
        write_prediction(out_dir, case_id, probability, np.asarray(meta["native_affine"]))
        native_mask = load_nifti(row["native_mask"], case_id)
        truth = read_volume(native_mask, case_id) > 0
        spacing = tuple(float(s) for s in native_mask.header.get_zooms()[:3])
        scores = evaluate_case(prediction, truth, spacing)
        rows.append(
            {
                "case_id": case_id,
                **scores,
                "dice_iso": dice(logits > 0, np.asarray(mask_iso) > 0),
                "seconds": seconds,
                "inference": INFERENCE_VERSION,
                "weights": weights,
                **{f"seconds_{plane}": t for plane, t in timings.items()},
            }
        )
        with atomic_path(metrics_file) as tmp:  # after every case: a stopped run resumes
            pd.DataFrame(rows).to_csv(tmp, index=False)
    scored = pd.DataFrame(rows, columns=None if rows else ["case_id"])
    return scored[scored["case_id"].isin(cases["case_id"])].reset_index(drop=True)


def evaluate_external(
    run_dirs: Sequence[str | os.PathLike],
    cohort_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    tta: str = "paper",
    planes: Sequence[str] = PLANES,
    device: str = "auto",
    progress: bool = True,
) -> pd.DataFrame:
    """Segment an external cohort with an ensemble of runs (``mstt-predict``) and score it
    against its masks on their native grid (the paper's external STS test)."""
    from mstt_lib.cohort import load_cohort
    from mstt_lib.predictor import Predictor

    predictor = Predictor(tta, planes, device, progress=progress).load_runs(run_dirs)
    # the runs' own modalities: a T1-only cohort's cases would all be skipped as missing their T2
    modalities = predictor.settings.modalities
    cases, skipped = load_cohort(cohort_dir, modalities=modalities, progress=progress, skip_bad=True)
    if cases.empty:  # an empty table would read as "nothing went wrong"
        first = f"; the first: {skipped[0]}" if skipped else ""
        raise ValueError(
            f"external cohort {cohort_dir}: no case can be segmented by runs of {'+'.join(modalities)} "
            f"({len(skipped)} skipped{first})"
        )
    predictor.predict_folder(cohort_dir, out_dir)
    rows = []
    for row in cases.to_dict("records"):
        prediction_file = Path(out_dir) / f"{row['case_id']}.nii.gz"
        if not prediction_file.is_file():
            continue
        truth_image = load_nifti(row["mask"], row["case_id"])
        spacing = tuple(float(s) for s in truth_image.header.get_zooms()[:3])
        prediction = read_volume(load_nifti(prediction_file, row["case_id"])) > 0
        rows.append(
            {"case_id": row["case_id"], **evaluate_case(prediction, read_volume(truth_image) > 0, spacing)}
        )
    return pd.DataFrame(rows)
