"""Inference seconds per case, before and after whole-slice inference, split by stage.

"Before" is the code path up to commit 2853cce (every slice padded or centre-cropped to
``image_size`` squared, one forward pass per TTA transform, every slice run), kept below as
``predict_volume_before``; "after" is ``mstt_lib.infer.predict_volume``. Both run in this one
script, at two settings: TTA none on the axial plane, and paper TTA on 3 planes. Cases:

- the synthetic default case (183 x 183 x 77 on the 1 mm grid) and a clinical-size one
  (a 512 x 512 x 40 T2 at 0.4 x 0.4 x 5 mm), with a resnet18 U-Net of random weights (the time
  does not depend on what the weights are); "after" through ``mstt-predict``'s
  ``predict_folder``, whose ``predictions.csv`` gives the stages (read, register, preprocess,
  infer, write);
- the 29 shared real T1 cases (``--sts-dir``) with chapter 8's final model (T1 only, 2 mm grid,
  resnet18; trained with the smoke real-data settings if missing): "after" on every case,
  "before" on the first ``--before-cases``; Dice on the 2 mm grid of both, and of the CPU
  variants (bfloat16 autocast, channels-last, no empty-slice skip) against the default.

Targets: at least 5 x faster than the 151.6 s recorded for the synthetic case with paper TTA x
3 planes (commit 064d0db); real cases under 15 s each with paper TTA x 3 planes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from _record import PeakMemory, record
from bench_preprocessing import _case_files

from mstt_lib.infer import (
    body_levels,
    cpu_bfloat16,
    empty_slices,
    inference_threads,
    load_run,
    predict_volume,
    set_inference_threads,
    tta_transforms,
)
from mstt_lib.metrics import dice
from mstt_lib.models import build_model
from mstt_lib.phantom import PhantomSettings
from mstt_lib.predict import STAGES, predict_folder
from mstt_lib.slices import (
    PLANE_AXIS,
    PLANES,
    CacheSettings,
    fit_to_size,
    preprocess_case,
    restore_size,
    sample_25d,
)

SETTINGS = {"TTA none x axial": ("none", ("axial",)), "TTA paper x 3 planes": ("paper", PLANES)}
RECORDED_BEFORE = 151.6  # s, synthetic case, paper TTA x 3 planes, benchmarks/results.md (064d0db)


# ---------------------------------------------------------------------------
# The code path before (commit 2853cce), for the comparison.


@torch.inference_mode()
def predict_batch_before(models, images: torch.Tensor, tta: str = "paper") -> torch.Tensor:
    total = torch.zeros((images.shape[0], 1, *images.shape[-2:]), dtype=torch.float32)
    transforms = tta_transforms(tta)
    for model in models:
        for forward, inverse in transforms:
            total += inverse(model(forward(images)).float())
    return total / (len(models) * len(transforms))


def predict_volume_before(models, volume, planes=PLANES, tta="paper", size=256, batch_size=16):
    fused = np.zeros(volume.shape[1:], dtype=np.float32)
    for model in models:
        model.eval()
    for plane in planes:
        axis = PLANE_AXIS[plane]
        count = volume.shape[axis + 1]
        for start in range(0, count, batch_size):
            indices = range(start, min(start + batch_size, count))
            samples = [sample_25d(volume, plane, i) for i in indices]
            shape = samples[0].shape[-2:]
            batch = torch.from_numpy(
                np.stack([fit_to_size(s.astype(np.float32), (size, size)) for s in samples])
            )
            logits = predict_batch_before(models, batch, tta)[:, 0].numpy()
            logits = restore_size(logits, shape, fill=-20.0)
            target = [slice(None)] * 3
            target[axis] = slice(start, start + len(samples))
            fused[tuple(target)] += np.moveaxis(logits, 0, axis)
    return fused / len(planes)


# ---------------------------------------------------------------------------


def _timed(function, *args, **kwargs):
    started = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - started


def _random_run(folder: Path, modalities: tuple[str, ...], spacing: float, size: int) -> Path:
    """A finished run folder holding a resnet18 U-Net of random weights."""
    folder.mkdir(parents=True)
    torch.manual_seed(0)
    channels = [f"{m}[{o}]" for m in modalities for o in ("index-1", "index", "index+1")]
    torch.save(build_model("unet", len(channels), "resnet18").state_dict(), folder / "model.pt")
    (folder / "params.json").write_text(
        json.dumps({"model": "unet", "encoder": "resnet18", "image_size": size})
    )
    preprocessing = {"modalities": list(modalities), "spacing_mm": spacing, "low_percentile": 0.05}
    preprocessing |= {"high_percentile": 99.95, "channels": channels}
    (folder / "preprocessing.json").write_text(json.dumps(preprocessing))
    return folder


def _show(rows: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    """Print rows as they are measured (the table goes to results.md at the end)."""
    for row in rows:
        print(" | ".join(row), flush=True)
    return rows


def _stages(table: pd.DataFrame) -> str:
    means = {s: table[f"seconds_{s}"].mean() for s in STAGES}
    return ", ".join(f"{s} {v:.2f}" for s, v in means.items())


def synthetic_rows(label: str, phantom: PhantomSettings, spacing, folder: Path) -> list[tuple[str, str, str]]:
    """Before (infer only) and after (every stage, through predict_folder) on one phantom case."""
    rows = []
    case = _case_files(folder / "files", phantom, 0, spacing)
    images = folder / "images"
    images.mkdir()
    shutil.copy(case["t1"], images / "CASE_0000.nii.gz")
    shutil.copy(case["t2"], images / "CASE_0001.nii.gz")
    run = _random_run(folder / "run", ("T1", "T2"), 1.0, 256)
    model, _, settings = load_run(run)
    volume = preprocess_case(case, settings)["image"]
    shape = "x".join(map(str, volume.shape[1:]))
    skipped = sum(int(empty_slices(volume, p, body_levels(volume)).sum()) for p in PLANES)
    for name, (tta, planes) in SETTINGS.items():
        _, before = _timed(predict_volume_before, [model], volume, planes, tta)
        with PeakMemory() as memory:
            table = predict_folder([run], images, folder / f"out-{tta}", tta, planes, "cpu", progress=False)
        after = float(table["seconds_infer"].iloc[0])
        total = float(table[[f"seconds_{s}" for s in STAGES]].sum(axis=1).iloc[0])
        target = f"≥ 5 x faster than {RECORDED_BEFORE} s" if label == "synthetic" and tta == "paper" else ""
        rows.append(
            (
                f"{label} (1 mm grid {shape}), {name}: inference",
                f"before {before:.1f} s, after {after:.1f} s: {before / after:.1f} x faster"
                + (f" ({RECORDED_BEFORE / after:.1f} x the recorded {RECORDED_BEFORE} s)" if target else ""),
                target,
            )
        )
        rows.append(
            (
                f"{label}, {name}: after, per stage (mstt-predict)",
                f"{total:.1f} s per case: {_stages(table)}; peak {memory.peak_gib:.2f} GiB",
                "",
            )
        )
    rows.append((f"{label}: slices without body, skipped", f"{skipped} of {sum(volume.shape[1:])}", ""))
    return rows


def precision_rows(model, volume: np.ndarray) -> tuple[list[tuple[str, str, str]], dict]:
    """Seconds of the CPU variants on one volume (paper TTA x 3 planes), best of two."""
    variants = {
        "float32": {"bfloat16": False, "channels_last": False},
        "float32 channels-last": {"bfloat16": False, "channels_last": True},
        "bfloat16 autocast": {"bfloat16": True, "channels_last": False},
        "bfloat16 + channels-last": {"bfloat16": True, "channels_last": True},
    }
    seconds = {}
    for name, options in variants.items():
        seconds[name] = min(
            _timed(predict_volume, [model], volume, PLANES, "paper", **options)[1] for _ in range(2)
        )
    model.to(memory_format=torch.contiguous_format)
    text = ", ".join(f"{n} {s:.1f} s" for n, s in seconds.items())
    default = "bfloat16 + channels-last" if cpu_bfloat16() else "float32 channels-last"
    title = (
        f"CPU variants, synthetic case, paper TTA x 3 planes, inference (best of 2; default here: {default})"
    )
    return [(title, text, "")], variants


def real_rows(
    sts_dir: Path, n_cases: int | None, before_cases: int, folder: Path, variants: dict
) -> list[tuple[str, str, str]]:
    from mstt_lib import pipeline
    from mstt_lib.cohort import read_ibsi
    from mstt_lib.params import real_data_params

    params = real_data_params("smoke", cohort=str(sts_dir))
    started = time.perf_counter()
    run = pipeline.final_run(params, "unet", progress=False)
    trained = time.perf_counter() - started
    model, _, settings = load_run(run)
    cases, _ = read_ibsi(sts_dir)
    cases = cases.sort_values("case_id").head(n_cases)
    selected = folder / "real-cases"  # the first n_cases, as links in the IBSI layout
    selected.mkdir()
    for case_id in cases["case_id"]:
        (selected / case_id).symlink_to(sts_dir / case_id)
    rows = [
        (
            "real: chapter 8's final model",
            f"{run.name} (T1, {settings.spacing_mm:g} mm grid, resnet18; {trained:.0f} s to train or load)",
            "",
        )
    ]
    for name, (tta, planes) in SETTINGS.items():
        with PeakMemory() as memory:
            table = predict_folder(
                [run], selected, folder / f"real-{tta}", tta, planes, "cpu", progress=False
            )
        totals = table[[f"seconds_{s}" for s in STAGES]].sum(axis=1)
        target = "< 15 s per case" if tta == "paper" else ""
        rows.append(
            (
                f"real T1 ({len(table)} cases), {name}: after, per case (mstt-predict)",
                f"mean {totals.mean():.1f} s, max {totals.max():.1f} s ({_stages(table)}); "
                f"peak {memory.peak_gib:.2f} GiB",
                target,
            )
        )
    # Dice on the 2 mm grid: before against after on the first cases, and the CPU variants
    scores: dict[str, list[float]] = {}
    before_seconds, after_seconds = [], []
    for k, row in enumerate(cases.to_dict("records")):
        case = preprocess_case(pd.Series(row), settings)
        volume, mask = case["image"], case["mask"]
        logits, after = _timed(predict_volume, [model], volume, PLANES, "paper")
        scores.setdefault("default", []).append(dice(logits > 0, mask))
        for name in ("float32", "float32 channels-last", "bfloat16 + channels-last"):
            other = predict_volume([model], volume, PLANES, "paper", **variants[name])
            scores.setdefault(name, []).append(dice(other > 0, mask))
        other = predict_volume([model], volume, PLANES, "paper", skip_empty=False)
        scores.setdefault("default without the empty-slice skip", []).append(dice(other > 0, mask))
        model.to(memory_format=torch.contiguous_format)
        if k < before_cases:
            old, before = _timed(predict_volume_before, [model], volume, PLANES, "paper", 128)
            scores.setdefault("before", []).append(dice(old > 0, mask))
            before_seconds.append(before)
            after_seconds.append(after)
    rows.append(
        (
            f"real T1, paper TTA x 3 planes, inference only, first {len(before_seconds)} cases",
            f"before {np.mean(before_seconds):.1f} s, after {np.mean(after_seconds):.1f} s per case: "
            f"{np.mean(before_seconds) / np.mean(after_seconds):.1f} x faster",
            "",
        )
    )
    rows.append(
        (
            f"real T1, paper TTA x 3 planes, Dice (2 mm grid), first {len(before_seconds)} cases",
            f"before {np.mean(scores['before']):.4f}, "
            f"after {np.mean(scores['default'][: len(before_seconds)]):.4f}",
            "",
        )
    )
    reference = np.array(scores["float32"])
    for name in ("float32 channels-last", "bfloat16 + channels-last", "default without the empty-slice skip"):
        change = np.abs(np.array(scores[name]) - reference)
        rows.append(
            (
                f"real T1 ({len(reference)} cases), paper TTA x 3 planes: Dice of {name} against float32",
                f"mean {np.mean(scores[name]):.4f} against {reference.mean():.4f}; "
                f"largest change on a case {change.max():.4f}",
                "≤ 0.001",
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sts-dir", default=str(Path(__file__).resolve().parents[1] / "../shared/data/sts-ibsi-t1")
    )
    parser.add_argument("--real-cases", type=int, default=None, help="the first N real cases (default: all)")
    parser.add_argument("--before-cases", type=int, default=3, help="real cases timed the old way too")
    args = parser.parse_args()
    set_inference_threads()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    rows = [
        (
            "CPU threads",
            f"{torch.get_num_threads()} (usable cores {inference_threads()}; load average at start {load})",
            "",
        )
    ]
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        rows += _show(synthetic_rows("synthetic", PhantomSettings(), None, folder / "synthetic"))
        rows += _show(
            synthetic_rows(
                "clinical 512x512x40 at 0.4x0.4x5 mm",
                PhantomSettings(matrix=512, n_slices=40),
                (0.4, 0.4, 5.0),
                folder / "clinical",
            )
        )
        case = _case_files(folder / "precision", PhantomSettings(), 0)
        torch.manual_seed(0)
        model = build_model("unet", 6, "resnet18").eval()
        precision, variants = precision_rows(model, preprocess_case(case, CacheSettings())["image"])
        rows += _show(precision)
        sts_dir = Path(args.sts_dir).resolve()
        if sts_dir.is_dir():
            rows += _show(real_rows(sts_dir, args.real_cases, args.before_cases, folder, variants))
        else:
            rows.append(("real T1 cases", f"skipped: no folder {sts_dir}", ""))
    record("Inference per case, before and after whole-slice inference (U-Net, resnet18 encoder)", rows)


if __name__ == "__main__":
    main()
