"""Inference seconds per volume and peak memory: synthetic and clinical sizes, with and
without test-time augmentation, split by plane; batched against a slice-by-slice loop
(target: 3 times faster or more on the CPU); on a GPU, when present, the same there.

The model is the smoke set's U-Net (resnet18 encoder, random weights: the time does not
depend on what the weights are).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
from _record import PeakMemory, record
from bench_preprocessing import _case_files

from mstt_lib.infer import predict_volume
from mstt_lib.models import build_model
from mstt_lib.phantom import PhantomSettings
from mstt_lib.slices import CacheSettings, preprocess_case


def _volume(settings: PhantomSettings, spacing=None):
    with tempfile.TemporaryDirectory() as folder:
        case = _case_files(Path(folder), settings, 0, spacing)
        # the images are registered already for the purpose of timing: T1 through the headers
        return preprocess_case(case, CacheSettings())["image"].astype("float32")


def _time(models, volume, tta, device, batch_size=16, planes=("axial", "coronal", "sagittal")):
    timings: dict = {}
    with PeakMemory() as memory:
        started = time.perf_counter()
        predict_volume(models, volume, planes, tta, 256, batch_size, device, timings)
        total = time.perf_counter() - started
    return total, timings, memory.peak_gib


def main() -> None:
    torch.manual_seed(0)
    rows = []
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    volumes = {
        "synthetic": _volume(PhantomSettings()),
        "clinical 512x512x40 at 0.4x0.4x5 mm": _volume(
            PhantomSettings(matrix=512, n_slices=40), (0.4, 0.4, 5.0)
        ),
    }
    for device in devices:
        name = "CPU" if device.type == "cpu" else f"GPU {torch.cuda.get_device_name()}"
        models = [build_model("unet", 6, "resnet18").eval().to(device)]
        for label, volume in volumes.items():
            for tta in ("none", "paper"):
                total, timings, peak = _time(models, volume, tta, device)
                planes = ", ".join(f"{p} {s:.1f} s" for p, s in timings.items())
                rows.append(
                    (
                        f"{name}, {label} (1 mm grid {'x'.join(map(str, volume.shape[1:]))}), TTA {tta}",
                        f"{total:.1f} s per volume ({planes}); peak {peak:.2f} GiB",
                        "",
                    )
                )
        volume = volumes["synthetic"]
        batched, _, _ = _time(models, volume, "none", device, 16, ("axial",))
        looped, _, _ = _time(models, volume, "none", device, 1, ("axial",))
        rows.append(
            (
                f"{name}, batched (16) against slice by slice, synthetic axial plane",
                f"{batched:.1f} s against {looped:.1f} s: {looped / batched:.1f} x faster",
                "≥ 3 x",
            )
        )
    record("Inference per volume (U-Net, resnet18 encoder)", rows)


if __name__ == "__main__":
    main()
