"""Registration, preprocessing and slicing: seconds and peak memory per case, and cache reads.

Per case at the synthetic default size and at a clinical size (a 512 x 512 x 40 T2 at
0.4 x 0.4 x 5 mm); with --cohort, the whole 199-case synthetic cohort registered and
preprocessed on 2 workers (target: 10 minutes or less); cache read throughput (target:
2,000 samples per second or more).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from _record import PeakMemory, record  # noqa: E402

from mstt_lib.io import save_nifti  # noqa: E402
from mstt_lib.phantom import PhantomSettings, generate_case, generate_cohort, plan_cohort  # noqa: E402
from mstt_lib.registration import RegistrationSettings, register_case, register_cohort  # noqa: E402
from mstt_lib.slices import PLANES, CacheSettings, SliceCache, build_cache, preprocess_case, sample_25d  # noqa: E402


def _case_files(folder: Path, settings: PhantomSettings, index: int, spacing=None) -> pd.Series:
    """Write one phantom case; with ``spacing`` (T2 mm), stretch both grids to it."""
    plan = plan_cohort(199, settings.seed)
    row = plan.iloc[index].to_dict()
    case = generate_case(row, index, settings)
    scale = np.ones(3)
    if spacing is not None:
        scale = np.asarray(spacing) / np.linalg.norm(case["T2"][1][:3, :3], axis=0)
    paths = {}
    for key in ("T1", "T2", "mask"):
        data, affine = case[key]
        affine = affine.copy()
        affine[:3, :3] = affine[:3, :3] * scale
        paths[key.lower()] = str(save_nifti(data, affine, folder / row["case_id"] / f"{key.lower()}.nii.gz"))
    return pd.Series({**row, **paths})


def _timed(function, *args):
    with PeakMemory() as memory:
        started = time.perf_counter()
        result = function(*args)
        seconds = time.perf_counter() - started
    return result, seconds, memory.peak_gib


def per_case(label: str, settings: PhantomSettings, indices, spacing=None) -> list[tuple[str, str, str]]:
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        times = {"registration": [], "preprocessing": [], "slicing": []}
        memory = {k: 0.0 for k in times}
        for index in indices:
            case = _case_files(folder / "in", settings, index, spacing)
            _, seconds, peak = _timed(register_case, case, folder / "reg", RegistrationSettings())
            times["registration"].append(seconds)
            memory["registration"] = max(memory["registration"], peak)
            registered = case.copy()
            for key in ("t1", "t2", "mask"):
                registered[key] = str(folder / "reg" / case["case_id"] / f"{key}.nii.gz")
            result, seconds, peak = _timed(preprocess_case, registered, CacheSettings())
            times["preprocessing"].append(seconds)
            memory["preprocessing"] = max(memory["preprocessing"], peak)
            volume = result["image"].astype(np.float16)

            def cut(volume=volume):
                return sum(
                    sample_25d(volume, plane, i).shape[0]
                    for plane, axis in zip(PLANES, (3, 2, 1), strict=True)
                    for i in range(volume.shape[axis])
                )

            _, seconds, peak = _timed(cut)
            times["slicing"].append(seconds)
            memory["slicing"] = max(memory["slicing"], peak)
        shape = result["image"].shape[1:]
        for stage, values in times.items():
            rows.append(
                (
                    f"{label}: {stage} per case (1 mm grid {shape[0]}x{shape[1]}x{shape[2]})",
                    f"{np.mean(values):.2f} s (peak {memory[stage]:.2f} GiB)",
                    "",
                )
            )
    return rows


def whole_cohort() -> list[tuple[str, str, str]]:
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        generate_cohort(folder / "cohort", PhantomSettings(), progress=False)
        cases = pd.read_csv(folder / "cohort" / "cohort.csv")
        for key in ("t1", "t2", "mask"):
            cases[key] = [str(folder / "cohort" / p) for p in cases[key]]
        with PeakMemory() as memory:
            started = time.perf_counter()
            quality = register_cohort(
                cases, folder / "reg", RegistrationSettings(), workers=2, progress=False
            )
            registered_at = time.perf_counter()
            registered = pd.read_csv(folder / "reg" / "cohort.csv")
            for key in ("t1", "t2", "mask"):
                registered[key] = [str(folder / "reg" / p) for p in registered[key]]
            build_cache(registered, folder / "cache", CacheSettings(), workers=2, progress=False)
            finished = time.perf_counter()
    return [
        (f"whole cohort ({len(cases)} cases): registration", f"{registered_at - started:.0f} s", ""),
        ("whole cohort: preprocessing into the cache", f"{finished - registered_at:.0f} s", ""),
        ("whole cohort: total on 2 workers", f"{(finished - started) / 60:.1f} min", "≤ 10 min"),
        (
            "whole cohort: registrations passed",
            f"{int((quality['status'] == 'ok').sum())}/{len(quality)}",
            "",
        ),
        ("whole cohort: peak memory (process tree)", f"{memory.peak_gib:.2f} GiB", ""),
    ]


def cache_reads(samples: int = 4000) -> list[tuple[str, str, str]]:
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        cases = [_case_files(folder / "in", PhantomSettings(), i) for i in range(4)]
        cache = SliceCache(build_cache(pd.DataFrame(cases), folder / "cache", workers=1, progress=False))
        rows = list(cache.select(min_tumour_voxels=100).itertuples(index=False))
        order = np.random.default_rng(0).integers(0, len(rows), samples)
        for i in order[:50]:  # warm the page cache, as an epoch after the first would be
            cache.sample(rows[i].case_id, rows[i].plane, int(rows[i].index))
        started = time.perf_counter()
        for i in order:
            cache.sample(rows[i].case_id, rows[i].plane, int(rows[i].index))
        rate = samples / (time.perf_counter() - started)
    return [
        ("cache reads, random 2.5D samples 6x256x256 (one process)", f"{rate:,.0f} samples/s", "≥ 2,000/s")
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cohort", action="store_true", help="also time the whole 199-case cohort (~10 min)")
    args = parser.parse_args()
    rows = per_case("synthetic default", PhantomSettings(), range(4))
    rows += per_case(
        "clinical 512x512x40 T2 at 0.4x0.4x5 mm",
        PhantomSettings(matrix=512, n_slices=40),
        [0],
        (0.4, 0.4, 5.0),
    )
    rows += cache_reads()
    if args.cohort:
        rows += whole_cohort()
    record("Registration, preprocessing and 2.5D slicing", rows)


if __name__ == "__main__":
    main()
