"""Scale-out: the grid as Ray tasks (parallel, equal to serial runs, retried after a kill, the
command line), per-case stages on Ray, and data-parallel training with torchrun on gloo."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scale_helpers import TINY_RUN, library_environment
from stop_helpers import start_as_from_a_terminal, wait_for

from mstt_lib.io import save_nifti
from mstt_lib.slices import SliceCache, build_cache
from mstt_lib.train import TrainSettings, train


@pytest.fixture(scope="module")
def cluster():
    """A local Ray instance of 2 CPUs (no dashboard) for this module, shut down at its end."""
    from mstt_lib.cluster import ray_session

    ray = pytest.importorskip("ray", reason="Ray is the [cluster] extra; make install installs it")

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # tasks defined here
    with ray_session(num_cpus=2) as session:
        session_folder = Path(ray._private.worker._global_node.get_session_dir_path())
        yield session
    assert not ray.is_initialized()
    assert session_folder.name.startswith("session_") and not session_folder.parent.exists()  # removed


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> SliceCache:
    """Three 32 x 32 x 24 cases at 1 mm with a bright ball (as in test_train)."""
    root = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in (32, 32, 24)], indexing="ij"), -1)
    rows = []
    for k, centre in enumerate([(12, 14, 12), (20, 18, 11), (15, 20, 13)]):
        ball = np.linalg.norm(grid - np.array(centre), axis=-1) < 7
        paths = {}
        for name, data in (
            ("t1", 0.4 + 0.05 * rng.standard_normal(ball.shape) + 0.3 * ball),
            ("t2", 0.3 + 0.05 * rng.standard_normal(ball.shape) + 0.5 * ball),
            ("mask", ball),
        ):
            dtype = np.uint8 if name == "mask" else np.float32
            paths[name] = str(
                save_nifti(data.astype(dtype), np.eye(4), root / f"CASE_{k}" / f"{name}.nii.gz")
            )
        rows.append({"case_id": f"CASE_{k}", **paths})
    return SliceCache(build_cache(pd.DataFrame(rows), root / "cache", workers=1, progress=False))


TINY = dict(
    model="unet",
    encoder="resnet18",
    image_size=32,
    min_tumour_voxels=20,
    batch_size=4,
    lr=3e-3,
    planes=("axial",),
    device="cpu",
    samples_per_epoch=8,
    val_samples=4,
)


def _train_task(settings, cache_folder, train_cases, val_cases, run_dir):
    """A (model, fold) run as a Ray task, on one thread: (process id, start, end)."""
    torch.set_num_threads(1)
    started = time.time()
    train(settings, SliceCache(cache_folder), train_cases, val_cases, run_dir, progress=False)
    return os.getpid(), started, time.time()


def _folds(cache):
    cases = cache.case_ids
    return [(cases[:2], cases[2:]), (cases[1:], cases[:1])]


def _weights(folder):
    return torch.load(folder / "model.pt", weights_only=True)


def _assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _serial(settings, cache, train_cases, val_cases, folder):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(settings, cache, train_cases, val_cases, folder, progress=False)
    finally:
        torch.set_num_threads(threads)
    return _weights(folder)


def test_two_grid_tasks_run_in_parallel_and_equal_serial_runs(cluster, cache, tmp_path):
    from mstt_lib.cluster import run_tasks, task_options

    jobs = [
        (TrainSettings(**TINY, fold=k, epochs=2), cache.folder, train_cases, val_cases, tmp_path / f"ray{k}")
        for k, (train_cases, val_cases) in enumerate(_folds(cache))
    ]
    resources = task_options(None, 1)
    assert resources == {"num_gpus": 0.0, "num_cpus": 1.0}  # no GPU here: CPUs only
    (pid0, start0, end0), (pid1, start1, end1) = run_tasks(_train_task, jobs, resources, progress=False)
    assert pid0 != pid1 and start0 < end1 and start1 < end0  # two workers, overlapping in time
    for k, (train_cases, val_cases) in enumerate(_folds(cache)):
        serial = _serial(jobs[k][0], cache, train_cases, val_cases, tmp_path / f"serial{k}")
        _assert_same_weights(_weights(tmp_path / f"ray{k}"), serial)
    # the two folds are different runs
    assert not torch.equal(
        _weights(tmp_path / "ray0")["segmentation_head.0.weight"], serial["segmentation_head.0.weight"]
    )


def _killed_once_task(settings, cache_folder, train_cases, val_cases, run_dir, flag):
    """Dies (the whole worker process) as soon as the first checkpoint is written, the first
    time; the retry records the epoch of the checkpoint it finds, then trains."""
    from pathlib import Path

    checkpoint = Path(run_dir) / "checkpoint.pt"
    if not os.path.exists(flag):

        def kill_after_first_checkpoint():
            while not checkpoint.is_file():
                time.sleep(0.002)
            Path(flag).write_text(str(os.getpid()))
            os._exit(1)

        threading.Thread(target=kill_after_first_checkpoint, daemon=True).start()
        resumed_from = None
    else:
        resumed_from = torch.load(checkpoint, weights_only=False)["epoch"]
    torch.set_num_threads(1)
    train(settings, SliceCache(cache_folder), train_cases, val_cases, run_dir, progress=False)
    return os.getpid(), resumed_from


def test_a_task_killed_midway_is_retried_and_resumes_from_its_checkpoint(cluster, cache, tmp_path):
    from mstt_lib.cluster import run_tasks

    train_cases, val_cases = _folds(cache)[0]
    settings = TrainSettings(**TINY, epochs=4)
    flag = tmp_path / "first-attempt-died"
    job = (settings, cache.folder, train_cases, val_cases, tmp_path / "run", str(flag))
    [(pid, resumed_from)] = run_tasks(_killed_once_task, [job], {"num_cpus": 1}, retries=1, progress=False)
    assert flag.is_file() and int(flag.read_text()) != pid  # the first worker died; another ran it again
    assert resumed_from is not None and 0 <= resumed_from < settings.epochs - 1  # a checkpoint midway
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    assert list(history["epoch"]) == [1, 2, 3, 4]
    _assert_same_weights(
        _weights(tmp_path / "run"), _serial(settings, cache, train_cases, val_cases, tmp_path / "straight")
    )


def test_without_retries_a_killed_task_fails(cluster, cache, tmp_path):
    from mstt_lib.cluster import run_tasks

    train_cases, val_cases = _folds(cache)[0]
    job = (
        TrainSettings(**TINY, epochs=4),
        cache.folder,
        train_cases,
        val_cases,
        tmp_path / "run",
        str(tmp_path / "f"),
    )
    with pytest.raises(cluster.exceptions.WorkerCrashedError):
        run_tasks(_killed_once_task, [job], {"num_cpus": 1}, retries=0, progress=False)
    assert (tmp_path / "f").is_file() and not (tmp_path / "run" / "model.pt").exists()


def test_preprocessing_on_ray_writes_the_files_of_the_process_pool(cluster, cache, tmp_path):
    from mstt_lib.slices import CacheSettings

    cases = pd.DataFrame(
        [
            {
                "case_id": c,
                **{n: str(cache.folder.parent.parent / c / f"{n}.nii.gz") for n in ("t1", "t2", "mask")},
            }
            for c in cache.case_ids
        ]
    )
    settings = CacheSettings(spacing_mm=2.0)
    pool = build_cache(cases, tmp_path / "pool", settings, workers=2, progress=False, engine="process")
    tasks = build_cache(cases, tmp_path / "ray", settings, workers=2, progress=False, engine="ray")
    assert pool.name == tasks.name
    names = sorted(p.name for p in pool.iterdir())
    assert names == sorted(p.name for p in tasks.iterdir()) and len(names) > 3
    for name in names:
        assert (pool / name).read_bytes() == (tasks / name).read_bytes(), name


def test_prediction_of_many_cases_on_ray_writes_what_one_process_writes(
    cluster, cache, tiny_project, tmp_path, monkeypatch
):
    import nibabel as nib

    from mstt_lib.predictor import Predictor

    train_cases, val_cases = _folds(cache)[0]
    _serial(TrainSettings(**TINY, epochs=1), cache, train_cases, val_cases, tmp_path / "run")
    images = tmp_path / "images"  # the plain layout: <case>_0000 (T1), <case>_0001 (T2)
    images.mkdir()
    cohort = tiny_project[1]  # phantom cases, which register (the balls of ``cache`` do not)
    for case in sorted(p.name for p in cohort.iterdir() if (p / "t1.nii.gz").is_file())[:2]:
        for channel, name in (("0000", "t1"), ("0001", "t2")):
            (images / f"{case}_{channel}.nii.gz").symlink_to(cohort / case / f"{name}.nii.gz")
    tables, here = {}, []  # ``here``: the cases predicted in this process
    original = Predictor._predict_row
    monkeypatch.setattr(
        Predictor, "_predict_row", lambda self, row, *a: here.append(row) or original(self, row, *a)
    )
    for engine in ("process", "ray"):
        monkeypatch.setenv("MSTT_ENGINE", engine)
        predictor = Predictor.from_runs(
            [tmp_path / "run"], tta="none", planes=("axial",), device="cpu", workers=1, progress=False
        )
        tables[engine] = predictor.predict_folder(images, tmp_path / engine).set_index("case_id")
    assert len(here) == 2  # the process engine's; Ray's ran in its workers
    assert tables["ray"]["status"].str.startswith("ok").all() and len(tables["ray"]) == 2
    assert (tables["ray"]["status"].str[:2] == tables["process"]["status"].str[:2]).all()
    written = sorted(p.name for p in (tmp_path / "process").glob("*.nii.gz"))
    assert len(written) >= 2 and written == sorted(p.name for p in (tmp_path / "ray").glob("*.nii.gz"))
    for name in written:
        one, tasks = (nib.load(tmp_path / engine / name) for engine in ("process", "ray"))
        np.testing.assert_array_equal(np.asarray(one.dataobj), np.asarray(tasks.dataobj), err_msg=name)
        np.testing.assert_array_equal(one.affine, tasks.affine)


def test_registration_on_ray_writes_the_files_of_the_process_pool(cluster, tiny_project, tmp_path):
    """ANTs seeded and single-threaded in Ray's workers too (their environment is set first)."""
    from mstt_lib.cohort import load_cohort
    from mstt_lib.registration import RegistrationSettings, register_cohort

    _, cohort = tiny_project
    cases = load_cohort(cohort, progress=False)[0].head(2)
    settings = RegistrationSettings()
    tables = {
        engine: register_cohort(cases, tmp_path / engine, settings, workers=2, progress=False, engine=engine)
        for engine in ("process", "ray")
    }
    pd.testing.assert_frame_equal(tables["process"], tables["ray"])
    files = sorted(p.relative_to(tmp_path / "process") for p in (tmp_path / "process").rglob("*.nii.gz"))
    assert len(files) >= 4
    for name in files:
        assert (tmp_path / "process" / name).read_bytes() == (tmp_path / "ray" / name).read_bytes(), name


def test_the_grid_command_runs_chapter_4_as_a_ray_task(cluster, tiny_project):
    root, cohort = tiny_project
    address = cluster.get_runtime_context().gcs_address
    command = [sys.executable, "-m", "mstt_lib.runner", "grid", "--engine", "ray", "--address", address]
    command += ["--params", "smoke", "-p", "cohort", str(cohort), "-p", "epochs", "1", "-p", "device", "cpu"]
    command += ["-p", "folds", "[0]"]
    result = subprocess.run(command, cwd=root, env=library_environment(), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    executed = root / "work" / "grid" / "smoke" / "04_training-unet-fold0.ipynb"
    assert executed.is_file() and not list(executed.parent.glob(".*"))  # no partial copy left
    [run] = (root / "work" / "runs" / "tiny").glob("unet-fold0-*")
    assert (run / "model.pt").is_file() and json.loads((run / "run.json").read_text())["epochs"] == 1
    assert run.name in result.stdout and "val_dice" in result.stdout  # the grid's table of runs
    table = pd.read_csv(root / "work" / "grid" / "smoke" / "runs.csv")
    assert list(table["run"]) == [run.name] and list(table["epoch"]) == [1]


def _train_command(values: dict, launcher: list[str]) -> list[str]:
    command = [sys.executable, "-m", "mstt_lib.launch", "--params", "smoke", *launcher]
    return command + [x for key, value in values.items() for x in ("-p", key, json.dumps(value))]


def _stop_at_the_first_checkpoint(command, root, env, work, ctrl_c: bool) -> tuple[int, str]:
    """The two-process run, stopped once its first checkpoint exists: Ctrl-C to the whole process
    group (as a terminal sends it), or SIGTERM to the launcher alone (as a scheduler may send it).
    torchrun and its processes must end with the launcher: (exit status, stderr)."""
    psutil = pytest.importorskip("psutil")
    quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    launcher = start_as_from_a_terminal(command, cwd=root, env=env, **quiet)
    try:
        wait_for(lambda: any(work.glob("runs/tiny/unet-fold0-*/checkpoint.pt")), launcher, seconds=300)
        launched = psutil.Process(launcher.pid).children(recursive=True)
        assert len(launched) >= 3, launched  # torchrun and its two processes
        if ctrl_c:
            os.killpg(launcher.pid, signal.SIGINT)
        else:
            launcher.send_signal(signal.SIGTERM)
        _, errors = launcher.communicate(timeout=120)
        _, alive = psutil.wait_procs(launched, timeout=30)
    finally:
        with contextlib.suppress(ProcessLookupError):  # whatever is left, so that a failure leaves nothing
            os.killpg(launcher.pid, signal.SIGKILL)
        launcher.wait()
    assert alive == [], f"still running after the launcher was stopped: {[p.cmdline() for p in alive]}"
    # one line: neither torchrun's traceback nor rank 0's own stop line beside the launcher's
    assert "Traceback" not in errors and errors.count("; what it finished is kept") == 1, errors[-3000:]
    assert errors.splitlines()[-1].startswith("python -m mstt_lib.launch: "), errors[-3000:]
    return launcher.returncode, errors


def test_torchrun_with_two_gloo_processes_matches_one_process(tiny_project, tmp_path):
    """Same global batch (4 = 2 x 2): the per-epoch metrics agree within the stated tolerance
    (README: 1% on the losses, 0.02 Dice; bfloat16 autocast on this CPU and Adam's sign-like
    first steps amplify summation-order differences). The two-process run is stopped after its
    first checkpoint and started again: it resumes."""
    root, cohort = tiny_project
    values = {**TINY_RUN, "cohort": str(cohort), "lr": 1e-4, "n_folds": 2, "epochs": 3}
    system_tmp = tmp_path / "system-tmp"  # torchrun's default log folder would go here
    system_tmp.mkdir()
    env = {**library_environment(), "TMPDIR": str(system_tmp)}
    one_work, two_work = tmp_path / "one", tmp_path / "two"
    one_command = _train_command({**values, "work_dir": str(one_work)}, [])
    two_command = _train_command({**values, "work_dir": str(two_work)}, ["--devices", "2"])
    status, errors = _stop_at_the_first_checkpoint(two_command, root, env, two_work, ctrl_c=False)
    assert status == 128 + signal.SIGTERM, errors[-3000:]
    assert "stopped by SIGTERM" in errors.splitlines()[-1]
    [two_run] = two_work.glob("runs/tiny/unet-fold0-*")
    assert not (two_run / "model.pt").exists()
    done = torch.load(two_run / "checkpoint.pt", weights_only=False)["history"]
    assert 1 <= len(done) < 3
    for command in (two_command, one_command):
        result = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
    [one_run] = one_work.glob("runs/tiny/unet-fold0-*")
    one, two = (pd.read_csv(run / "history.csv") for run in (one_run, two_run))
    assert list(two["epoch"]) == [1, 2, 3] and list(two["steps"]) == list(one["steps"])
    pd.testing.assert_frame_equal(two.iloc[: len(done)], pd.DataFrame(done))  # resumed, not redone
    assert np.allclose(two["train_loss"], one["train_loss"], rtol=0.01), (one, two)
    assert np.allclose(two["val_loss"], one["val_loss"], rtol=0.01), (one, two)
    assert np.allclose(two["val_dice"], one["val_dice"], atol=0.02), (one, two)
    assert json.loads((two_run / "run.json").read_text())["processes"] == 2
    assert "processes" not in json.loads((one_run / "run.json").read_text())
    # only rank 0 wrote: no stray temporary files beside the run's, and nothing outside work_dir
    assert not [p.name for p in two_run.iterdir() if p.name.startswith(".")]
    assert not list(system_tmp.glob("torchelastic_*"))


def test_ctrl_c_stops_a_torchrun_launch_in_one_line_and_by_sigint(tiny_project, tmp_path):
    root, cohort = tiny_project
    values = {**TINY_RUN, "cohort": str(cohort), "n_folds": 2, "epochs": 3, "work_dir": str(tmp_path / "w")}
    command = _train_command(values, ["--devices", "2"])
    env = {**library_environment(), "TMPDIR": str(tmp_path)}
    status, errors = _stop_at_the_first_checkpoint(command, root, env, tmp_path / "w", ctrl_c=True)
    assert status == -signal.SIGINT, errors[-3000:]  # a shell loop around it stops too (test_io)
    assert "interrupted" in errors.splitlines()[-1]


ONE_STEP = """
import sys, torch
from mstt_lib.distributed import current_world, init_process_group
from mstt_lib.models import build_model

world = init_process_group("cpu")
torch.manual_seed(0)
model = build_model("unet", 6, "resnet18", None, "tile").double()
generator = torch.Generator().manual_seed(1)
data = torch.utils.data.TensorDataset(torch.rand(8, 6, 64, 64, generator=generator, dtype=torch.float64),
                                      (torch.rand(8, 1, 64, 64, generator=generator) > 0.8).double())
trained = world.wrap(model, torch.device("cpu"))
for images, masks in world.loader(data, 4):  # two global batches of 4
    model.zero_grad()
    torch.nn.functional.binary_cross_entropy_with_logits(trained(images), masks).backward()
if world.main:
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state.update({"grad." + k: p.grad for k, p in model.named_parameters()})
    torch.save(state, sys.argv[1])
"""


def test_a_data_parallel_step_equals_the_single_process_step_in_float64(tmp_path):
    """The mechanism, exactly: each process gets half of each global batch, batch normalisation
    sees the global batch, gradients are averaged; only summation order differs. In float64:
    in float32 the batch normalisation of the deepest (2 x 2) stage amplifies that rounding to
    0.6 % of a gradient on the CI machine. (Local batch statistics fail this at once.)"""
    from mstt_lib.distributed import World
    from mstt_lib.models import build_model

    script = tmp_path / "step.py"
    script.write_text(ONE_STEP)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command += [f"--log-dir={os.devnull}"]
    command += [str(script), str(tmp_path / "two.pt")]
    result = subprocess.run(command, env=library_environment(), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    two = torch.load(tmp_path / "two.pt", weights_only=True)

    torch.manual_seed(0)
    model = build_model("unet", 6, "resnet18", None, "tile").double()
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(8, 6, 64, 64, generator=generator, dtype=torch.float64)
    masks = (torch.rand(8, 1, 64, 64, generator=generator) > 0.8).double()
    data = torch.utils.data.TensorDataset(images, masks)
    for batch_images, batch_masks in World().loader(data, 4):
        model.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(model(batch_images), batch_masks).backward()
    one = {k: v for k, v in model.state_dict().items()}
    one.update({"grad." + k: p.grad for k, p in model.named_parameters()})
    assert one.keys() == two.keys()
    for key in one:
        scale = one[key].double().abs().max().clamp(min=1e-3)
        assert (one[key].double() - two[key].double()).abs().max() <= 1e-8 * scale, key
    # and local batch statistics would not do: the buffers moved by the global batch's statistics
    assert two["encoder.bn1.num_batches_tracked"] == 2


def test_the_engine_comes_from_the_environment_and_a_wrong_one_is_named(monkeypatch):
    from mstt_lib.engines import default_engine, engine_environment, map_cases

    monkeypatch.delenv("MSTT_ENGINE", raising=False)
    assert default_engine() == "process"
    with engine_environment("ray"):
        assert default_engine() == "ray"
    assert default_engine() == "process"
    monkeypatch.setenv("MSTT_ENGINE", "dask")
    with pytest.raises(ValueError, match="MSTT_ENGINE='dask' is not an engine"):
        default_engine()
    with pytest.raises(ValueError, match="unknown engine 'threads'"):
        map_cases(abs, [1], engine="threads")
    assert map_cases(abs, [-3, 2, -1], workers=2, engine="process", progress=False) == [3, 2, 1]


def _fail_first_write_the_others_slowly(job: tuple[int, str]) -> None:
    from mstt_lib.io import atomic_path

    index, folder = job
    if index == 0:
        raise ValueError("case 0 is damaged")
    with atomic_path(Path(folder) / f"case{index}.txt") as tmp:
        tmp.write_text("half")
        time.sleep(3)


def test_a_failed_job_stops_the_pools_other_jobs_and_removes_their_temporary_files(tmp_path):
    """The pool's own shutdown would run every queued job to the end before the error is seen."""
    from mstt_lib.engines import map_cases

    jobs = [(index, str(tmp_path)) for index in range(5)]
    with pytest.raises(ValueError, match="case 0 is damaged"):
        map_cases(_fail_first_write_the_others_slowly, jobs, workers=2, engine="process", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_the_grid_refuses_cluster_options_without_ray(capsys):
    from mstt_lib.runner import main

    for flags in (["--address", "auto"], ["--gpus-per-task", "0.5"]):
        with pytest.raises(SystemExit) as stop:
            main(["grid", *flags])
        assert stop.value.code == 2
        assert f"{flags[0]} is for --engine ray" in capsys.readouterr().err


def test_partial_executed_copies_of_killed_grid_tasks_are_removed(tmp_path):
    from mstt_lib.io import atomic_path
    from mstt_lib.runner import _remove_partial_copies

    target, other = tmp_path / "04_training-unet-fold0.ipynb", tmp_path / "04_training-unet-fold1.ipynb"
    writers = [atomic_path(target), atomic_path(other)]  # writers that never returned (worker killed)
    partial, kept = (writer.__enter__() for writer in writers)
    assert partial.is_file() and partial.name.startswith(".04_training-unet-fold0.ipynb.")
    target.write_text("{}")
    _remove_partial_copies([target])
    assert not partial.exists() and target.is_file() and kept.is_file()
    writers[1].__exit__(None, None, None)
