"""One ``Predictor``: trained runs loaded once, then arrays, files, folders or DICOM series segmented.

    from mstt_lib.predictor import Predictor

    predictor = Predictor(tta="paper", device="auto")
    predictor.initialize_from_trained_model_folder("work/runs/synthetic-v2")  # its fold ensemble
    probability, mask = predictor.predict_array(image, affine)      # (C, X, Y, Z) on one grid
    predictor.predict_files("out/", t1="new_t1.nii.gz", t2="new_t2.nii.gz", case_id="new")
    table = predictor.predict_folder("new_cases/", "out/")         # what ``mstt-predict`` runs

A run folder, several (their logits are averaged), an ensemble folder (``mstt_lib.ensemble``:
its fold runs and its post-processing) or a parent folder holding fold runs
(``initialize_from_trained_model_folder``, as nnU-Net's ``nnUNetPredictor`` finds its folds).
New cases are registered and preprocessed as the runs recorded in their ``plans.json``
(``mstt_lib.plans``). A run trained before runs recorded their plans falls back to the default
registration settings with a warning: every named parameter set registers rigidly with them, so
the fallback reproduces those runs, and refusing would make a user retrain (hours on a GPU) for
a file that only documents what the defaults already do.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import tempfile
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from mstt_lib.cohort import CaseProblem, CohortError, read_cases, read_cohort, validate_cases
from mstt_lib.engines import default_engine, map_cases
from mstt_lib.ensemble import ENSEMBLE_FILE, resolve_runs, weights_stamp
from mstt_lib.infer import (
    INFERENCE_VERSION,
    load_run,
    predict_volume,
    set_inference_threads,
    to_native,
    write_prediction,
)
from mstt_lib.io import atomic_path, describe_error, file_stamp, save_nifti, short_digest
from mstt_lib.plans import read_plans, registration_from_plans
from mstt_lib.postprocess import Choice, binarize
from mstt_lib.slices import PLANES, preprocess_read, read_case

__all__ = [
    "Predictor",
    "RunFolderError",
    "STAGES",
    "find_fold_runs",
    "load_runs",
    "read_input",
    "dicom_input",
]

log = logging.getLogger(__name__)

STAGES = ("read", "register", "preprocess", "infer", "write")
"""The stages whose seconds ``predictions.csv`` lists per case (``seconds_<stage>``)."""
_FOLD_RUN = re.compile(r"(?P<model>.+)-fold(?P<fold>\d+)-[0-9a-f]+")


class RunFolderError(ValueError):
    """A trained run folder that cannot be used; the message names the folder or file."""


def read_input(
    folder: str | os.PathLike, modalities: Sequence[str] = ("T1", "T2"), check_voxels: bool = True
) -> tuple[pd.DataFrame, list[CaseProblem]]:
    """The cases of ``folder`` (any layout ``cohort.read_cases`` reads) that can be segmented,
    and those that cannot.

    Table-level faults (duplicate, empty or unsafe case ids, an unreadable table) stop with
    a ``CohortError``: they leave no sensible set of cases to predict. A case whose own
    files are at fault is returned among the problems, to be listed in ``predictions.csv``.
    """
    table, problems = read_cases(folder, masks=False)
    if problems:
        raise CohortError(problems)
    return _checked(table, modalities, check_voxels)


def _checked(table: pd.DataFrame, modalities, check_voxels: bool = True):
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
        for name in ("params.json", "preprocessing.json", "plans.json"):
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


def _recipe(run: Path) -> str:
    """What fold runs of one cross-validation share: their settings but the fold, and preprocessing."""
    training = json.loads((run / "params.json").read_text()) if (run / "params.json").is_file() else {}
    training.pop("fold", None)
    preprocessing = (run / "preprocessing.json").read_text() if (run / "preprocessing.json").is_file() else ""
    return json.dumps(training, sort_keys=True) + preprocessing


def find_fold_runs(
    folder: str | os.PathLike, model: str | None = None, folds: Sequence[int] | None = None
) -> list[Path]:
    """The run folders a trained-model folder stands for (nnU-Net's trained model folder).

    A run or an ensemble folder stands for itself. A parent folder (``work/runs/<cohort>``)
    gives its one ensemble folder (of ``model``, when given), or else its finished fold runs
    (``<model>-fold<k>-<hash>``, those of ``folds`` when given) when they are one
    cross-validation: the same settings but the fold. Anything ambiguous is an error that lists
    what was found.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise RunFolderError(f"no trained model folder {folder}")
    if (folder / ENSEMBLE_FILE).is_file() or (folder / "model.pt").is_file():
        return [folder]
    children = sorted(p for p in folder.iterdir() if p.is_dir())
    if folds is None:
        ensembles = [
            p
            for p in children
            if (p / ENSEMBLE_FILE).is_file() and (model is None or p.name.startswith(model))
        ]
        if len(ensembles) == 1:
            return ensembles
        if len(ensembles) > 1:
            names = ", ".join(p.name for p in ensembles)
            raise RunFolderError(f"{folder} holds {len(ensembles)} ensemble folders ({names}): name one")
    runs = []
    for child in children:
        match = _FOLD_RUN.fullmatch(child.name)
        if not match or not (child / "model.pt").is_file():
            continue
        if model is not None and match["model"] != model:
            continue
        if folds is not None and int(match["fold"]) not in set(folds):
            continue
        runs.append((int(match["fold"]), child))
    if not runs:
        raise RunFolderError(f"{folder} holds no finished fold runs or ensemble folder")
    groups: dict[str, list[tuple[int, Path]]] = {}
    for fold, run in runs:
        groups.setdefault(_recipe(run), []).append((fold, run))
    if len(groups) > 1:
        listing = "; ".join(", ".join(r.name for _, r in sorted(g)) for g in groups.values())
        raise RunFolderError(
            f"{folder} holds fold runs of {len(groups)} different trainings ({listing}): "
            "name the model, the folds or an ensemble folder"
        )
    chosen = sorted(next(iter(groups.values())))
    folds_found = [f for f, _ in chosen]
    if len(set(folds_found)) != len(folds_found):
        raise RunFolderError(f"{folder} holds more than one run of a fold: {[r.name for _, r in chosen]}")
    return [run for _, run in chosen]


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


def _is_dicom_file(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(132)[128:] == b"DICM"
    except OSError:
        return False


def _dicom_files(folder: Path, limit: int = 20) -> bool:
    """Whether ``folder`` holds DICOM files (the first ``limit`` files are looked at)."""
    for count, path in enumerate(p for p in sorted(folder.rglob("*")) if p.is_file()):
        if count >= limit:
            break
        if _is_dicom_file(path):
            return True
    return False


def dicom_input(folder: str | os.PathLike, modalities: Sequence[str]) -> dict[str, Path] | None:
    """The DICOM series folder of each modality when ``folder`` is DICOM input, else None.

    For a one-modality run the folder is the series (searched recursively); for T1 and T2 it
    holds a ``T1`` and a ``T2`` subfolder, one series each. Other layouts are not DICOM input.
    """
    folder = Path(folder)
    if not folder.is_dir() or any(folder.glob("*.nii*")) or (folder / "cohort.csv").is_file():
        return None
    if len(modalities) == 1:
        named = folder / modalities[0]
        source = named if named.is_dir() else folder
        return {modalities[0]: source} if _dicom_files(source) else None
    found = {m: folder / m for m in modalities}
    if all(path.is_dir() and _dicom_files(path) for path in found.values()):
        return found
    if _dicom_files(folder):
        raise CohortError(
            [
                CaseProblem(
                    folder.name,
                    str(folder),
                    f"DICOM input for a {'+'.join(modalities)} run needs one series per modality, "
                    f"in subfolders named {' and '.join(modalities)}",
                )
            ]
        )
    return None


class Predictor:
    """Trained runs loaded once, with the registration and preprocessing they recorded."""

    def __init__(
        self,
        tta: str = "paper",
        planes: Sequence[str] = PLANES,
        device: str | torch.device = "auto",
        batch_size: int = 16,
        workers: int = 2,
        progress: bool = True,
    ):
        from mstt_lib.devices import resolve_device

        self.tta, self.planes = tta, tuple(planes)
        self.device = resolve_device(device) if isinstance(device, str) else torch.device(device)
        self.batch_size, self.workers, self.progress = int(batch_size), int(workers), progress
        self.run_dirs: list[Path] = []
        self.models: list[torch.nn.Module] = []
        self.postprocessing = Choice()

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_runs(cls, run_dirs: Sequence[str | os.PathLike], **options) -> Predictor:
        """A predictor of these run or ensemble folders (``options``: those of the constructor)."""
        predictor = cls(**options)
        predictor.load_runs(run_dirs)
        return predictor

    def initialize_from_trained_model_folder(
        self, folder: str | os.PathLike, model: str | None = None, folds: Sequence[int] | None = None
    ) -> Predictor:
        """Load what a trained-model folder stands for (``find_fold_runs``): a run, an ensemble, or
        the fold runs (or ensemble) found in a parent folder."""
        return self.load_runs(find_fold_runs(folder, model, folds))

    def load_runs(self, run_dirs: Sequence[str | os.PathLike]) -> Predictor:
        """Load run or ensemble folders; their logits will be averaged."""
        if not run_dirs:
            raise ValueError("give at least one trained run folder")
        try:  # ensemble folders stand for their fold runs and carry their post-processing
            runs, postprocessing = resolve_runs(run_dirs)
        except (OSError, ValueError) as error:
            raise RunFolderError(str(error)) from None
        loaded = load_runs(runs, self.device)
        settings = loaded[0][2]
        if any(s != settings for _, _, s in loaded[1:]):
            raise ValueError(
                "the runs were trained on differently preprocessed samples and cannot be averaged"
            )
        self.registration = self._registration(runs, settings.modalities)
        self.run_dirs, self.postprocessing = list(runs), postprocessing
        self.models = [model for model, _, _ in loaded]
        self.training = loaded[0][1]
        self.settings = settings
        return self

    @staticmethod
    def _registration(runs: Sequence[Path], modalities: Sequence[str]):
        """The registration settings the runs recorded (one set for all), or the defaults for old runs."""
        from mstt_lib.registration import RegistrationSettings

        if not {"T1", "T2"} <= set(modalities):
            return None
        recorded, unrecorded = {}, []
        for run in runs:
            try:
                plans = read_plans(run)
            except ValueError as error:
                raise RunFolderError(str(error)) from None
            if plans is None:
                unrecorded.append(run)
                continue
            try:
                settings = registration_from_plans(plans, run / "plans.json")
            except ValueError as error:
                raise RunFolderError(str(error)) from None
            recorded[run] = settings if settings is not None else RegistrationSettings()
        if len(set(recorded.values())) > 1:
            kinds = sorted({s.key() for s in recorded.values()})
            raise RunFolderError(f"the runs were registered differently ({kinds}) and cannot be averaged")
        if unrecorded:
            log.warning(
                "%s record no plans.json (trained before runs recorded them): registering with the "
                "default settings%s",
                ", ".join(str(r) for r in unrecorded),
                "" if not recorded else " of the other runs",
            )
        return next(iter(recorded.values())) if recorded else RegistrationSettings()

    def _require_runs(self) -> None:
        if not self.models:
            raise RuntimeError("no runs loaded: call load_runs or initialize_from_trained_model_folder first")

    # ------------------------------------------------------------------ arrays

    def logits(self, volume: np.ndarray, timings: dict | None = None) -> np.ndarray:
        """Fused logits (X, Y, Z) of a preprocessed (C, X, Y, Z) volume on the runs' grid."""
        self._require_runs()
        size = int(self.training["image_size"])
        return predict_volume(
            self.models, volume, self.planes, self.tta, size, self.batch_size, self.device, timings
        )

    def to_grid(
        self, logits: np.ndarray, affine: np.ndarray, shape: Sequence[int], target_affine: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(probability, mask) on a grid (``shape``, ``target_affine``), the mask by the recorded
        post-processing (threshold, then step)."""
        probability = to_native(logits, affine, shape, target_affine)
        return probability, binarize(probability, self.postprocessing)

    def predict_array(self, image: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(probability, mask) of images already on one grid: (C, X, Y, Z) in the order of the runs'
        modalities (or (X, Y, Z) for one), with their affine; the results are on that grid."""
        self._require_runs()
        image = np.asarray(image, dtype=np.float32)
        image = image[None] if image.ndim == 3 else image
        modalities = self.settings.modalities
        if image.ndim != 4 or image.shape[0] != len(modalities):
            raise ValueError(
                f"expected a ({len(modalities)}, X, Y, Z) array for {list(modalities)}, "
                f"got shape {image.shape}"
            )
        affine = np.asarray(affine, dtype=float)
        shape = tuple(image.shape[1:])
        zooms = tuple(float(z) for z in np.linalg.norm(affine[:3, :3], axis=0))
        read = {
            "case_id": "array",
            "grid": (shape, affine),
            "images": {m: (image[i], affine) for i, m in enumerate(modalities)},
            "mask": None,
            "mask_path": None,
            "native_shape": shape,
            "native_affine": affine,
            "native_spacing": zooms,
        }
        case = preprocess_read(read, self.settings)
        return self.to_grid(self.logits(case["image"]), case["affine"], shape, affine)

    # ------------------------------------------------------------------ files

    def predict_files(
        self,
        output_dir: str | os.PathLike,
        t1: str | os.PathLike | None = None,
        t2: str | os.PathLike | None = None,
        case_id: str = "case",
    ) -> pd.DataFrame:
        """Segment one case given as files into ``output_dir`` (``<case_id>.nii.gz`` and its
        probability); returns the status table, as ``predict_folder`` does."""
        table = pd.DataFrame([{"case_id": case_id, "t1": t1 and str(t1), "t2": t2 and str(t2)}])
        cases, problems = _checked(table, self.settings.modalities)
        return self._predict_cases(cases, problems, Path(output_dir))

    def predict_folder(
        self, input_dir: str | os.PathLike, output_dir: str | os.PathLike, dicom_seg: bool = False
    ) -> pd.DataFrame:
        """Predict every case of ``input_dir`` (a cohort folder in any layout ``mstt-predict``
        reads, or DICOM input: ``dicom_input``) into ``output_dir``; returns the status table.

        ``dicom_seg`` (DICOM input only) also writes ``<case>_seg.dcm``, a DICOM SEG that
        references the source series and carries its patient and study.
        """
        self._require_runs()
        output_dir = _writable_folder(Path(output_dir).resolve())  # stage files name absolute paths
        series = dicom_input(input_dir, self.settings.modalities)
        if series is None:
            if dicom_seg:
                raise ValueError("a DICOM SEG needs DICOM input (a series folder) to reference")
            cases, problems = read_input(input_dir, self.settings.modalities)
            return self._predict_cases(cases, problems, output_dir)
        case_id = Path(input_dir).resolve().name
        cases, problems, source, read_files = self._read_dicom(series, case_id, output_dir)
        return self._predict_cases(cases, problems, output_dir, source if dicom_seg else None, read_files)

    def _read_dicom(self, series: dict[str, Path], case_id: str, output_dir: Path):
        """Each modality's series as NIfTI in ``<output>/.dicom/``; (cases, problems, reference
        series, every file read)."""
        from mstt_lib.dicom import DicomError, read_series

        folder = output_dir / ".dicom"
        row: dict = {"case_id": case_id, "t1": None, "t2": None}
        reference = "T2" if "T2" in series else "T1"
        source, read_files = None, []
        try:
            for modality, series_dir in series.items():
                read = read_series(series_dir, case_id)
                read_files += read.files
                path = folder / f"{case_id}_{modality.lower()}.nii.gz"
                save_nifti(read.data, read.affine, path, dtype=np.float32)
                row[modality.lower()] = str(path)
                if modality == reference:
                    source = read.files
        except DicomError as error:
            return (
                pd.DataFrame(columns=["case_id", "t1", "t2"]),
                [CaseProblem(case_id, error.problem, error.path)],
                None,
                None,
            )
        cases, problems = _checked(pd.DataFrame([row]), self.settings.modalities)
        return cases, problems, {case_id: source}, {case_id: read_files}

    def _predict_row(
        self, row: dict, output_dir: Path, register_seconds: float, dicom_source: list[Path] | None
    ) -> tuple[str, str, dict[str, float] | None]:
        """One case, read to written: (case id, status, seconds per stage or None on error)."""
        settings = self.settings
        case_id = row["case_id"]
        clock = [time.perf_counter()]  # the end of each stage, in order
        try:
            read = read_case(pd.Series({**row, "mask": None}), settings)
            clock.append(time.perf_counter())
            case = preprocess_read(read, settings)
            clock.append(time.perf_counter())
            timings: dict = {}
            logits = self.logits(case["image"], timings)
            clock.append(time.perf_counter())
            probability, mask = self.to_grid(
                logits, case["affine"], case["native_shape"], case["native_affine"]
            )
            write_prediction(output_dir, case_id, probability, case["native_affine"], mask=mask)
            if dicom_source:
                from mstt_lib.dicom.seg import write_seg

                write_seg(mask, dicom_source, output_dir / f"{case_id}_seg.dcm", self.run_dirs)
            # last: a case counts as done only once every file of it is written
            meta = {**self._made_by(), "inputs": row["inputs"], "seconds_per_plane": timings}
            with atomic_path(output_dir / f"{case_id}.json") as tmp:
                tmp.write_text(json.dumps(meta, indent=1))
            clock.append(time.perf_counter())  # write: back to the native grid, and the files
        except Exception as error:  # one case's failure is its status; the other cases still run
            log.debug("case %s failed", case_id, exc_info=True)
            return case_id, f"error: {describe_error(error)}", None
        read_s, preprocess_s, infer_s, write_s = np.diff(clock)
        stages = dict(
            read=read_s, register=register_seconds, preprocess=preprocess_s, infer=infer_s, write=write_s
        )
        return (
            case_id,
            f"ok ({sum(stages.values()):.1f} s)",
            {stage: round(float(value), 3) for stage, value in stages.items()},
        )

    def _made_by(self) -> dict:
        """What a case's prediction follows from, recorded beside it (``<case>.json``)."""
        return {
            "runs": sorted(str(Path(d).resolve()) for d in self.run_dirs),  # however -r named them
            "weights": weights_stamp(sorted(self.run_dirs, key=lambda d: str(Path(d).resolve()))),
            "tta": self.tta,
            "planes": list(self.planes),
            "postprocessing": self.postprocessing.kind,
            "threshold": self.postprocessing.threshold,
            "registration": None if self.registration is None else self.registration.key(),
            "inference": INFERENCE_VERSION,
        }

    def _predict_cases(
        self,
        cases: pd.DataFrame,
        problems: list[CaseProblem],
        output_dir: Path,
        dicom_sources: dict[str, list[Path]] | None = None,
        input_files: dict[str, list[Path]] | None = None,
    ) -> pd.DataFrame:
        from mstt_lib.registration import register_cohort

        self._require_runs()
        output_dir = _writable_folder(Path(output_dir).resolve())
        settings = self.settings

        made_by = self._made_by()
        # a case's input files by size and time (a DICOM case: its series' files): another
        # scan under the same case id is segmented again, not served the earlier one's mask
        inputs = {
            row["case_id"]: _files_stamp(
                (input_files or {}).get(row["case_id"]) or [row.get("t1"), row.get("t2")]
            )
            for row in cases.to_dict("records")
        }

        def finished(case_id: str) -> bool:
            """Written earlier by these runs' weights with these settings (else predicted again)."""
            wanted = [f"{case_id}.nii.gz"] + ([f"{case_id}_seg.dcm"] if dicom_sources else [])
            record = output_dir / f"{case_id}.json"
            if not (record.is_file() and all((output_dir / name).is_file() for name in wanted)):
                return False
            try:
                earlier = json.loads(record.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError):
                return False
            made = {**made_by, "inputs": inputs[case_id]}
            return all(earlier.get(key) == value for key, value in made.items())

        done = {c for c in cases["case_id"] if finished(c)}
        todo = cases[~cases["case_id"].isin(done)].assign(mask=None)
        status = {c: "done earlier" for c in done}
        status.update({p.case_id: f"error: {p}" for p in problems})
        reference = "t2" if "T2" in settings.modalities else "t1"
        native = dict(zip(todo["case_id"], todo[reference], strict=True))
        register_seconds = 0.0  # a T1-only (or T2-only) run needs no registration
        if len(todo) and self.registration is not None:
            folder = output_dir / ".registration" / self.registration.key()
            started = time.perf_counter()
            quality = register_cohort(
                todo, folder, self.registration, workers=self.workers, progress=self.progress
            )
            register_seconds = (time.perf_counter() - started) / len(todo)  # the cohort's wall time, shared
            status.update(
                {r.case_id: f"registration {r.status}" for r in quality.itertuples() if r.status != "ok"}
            )
            todo = read_cohort(folder)[0] if (quality["status"] == "ok").any() else todo.iloc[:0]
        rows = [
            {**row, "native": native[row["case_id"]], "inputs": inputs[row["case_id"]]}
            for row in todo.to_dict("records")
        ]
        sources = dicom_sources or {}
        if default_engine() == "ray" and len(rows) > 1:
            # One Ray task per case; each worker loads the runs once (``_predict_job``).
            spec = (
                tuple(map(str, self.run_dirs)),
                self.postprocessing,
                self.tta,
                self.planes,
                str(self.device),
                self.batch_size,
            )
            jobs = [(spec, row, output_dir, register_seconds, sources.get(row["case_id"])) for row in rows]
            outcomes = map_cases(
                _predict_job, jobs, self.workers, "ray", progress=self.progress, desc="predicting"
            )
        else:
            set_inference_threads()
            outcomes = [
                self._predict_row(row, output_dir, register_seconds, sources.get(row["case_id"]))
                for row in tqdm(rows, desc="predicting", unit="case", disable=not self.progress)
            ]
        seconds = {case_id: stages for case_id, _, stages in outcomes if stages is not None}
        status.update({case_id: text for case_id, text, _ in outcomes})
        table = pd.DataFrame(sorted(status.items()), columns=["case_id", "status"])
        for stage in STAGES:  # seconds per stage of the cases segmented now (empty for the others)
            table[f"seconds_{stage}"] = [seconds.get(c, {}).get(stage) for c in table["case_id"]]
        with atomic_path(output_dir / "predictions.csv") as tmp:
            table.to_csv(tmp, index=False)
        return table


def _files_stamp(paths) -> str:
    """Which files (by path, size and modification time) a prediction was made from."""
    named = [str(p) for p in paths if isinstance(p, (str, os.PathLike)) and str(p)]
    return short_digest([(path, file_stamp(path)) for path in named])


_WORKER_PREDICTORS: dict[tuple, Predictor] = {}


def _predict_job(job: tuple) -> tuple[str, str, dict[str, float] | None]:
    """A Ray task's case: the runs are loaded once per worker process and kept for its next cases."""
    spec, row, output_dir, register_seconds, dicom_source = job
    if spec not in _WORKER_PREDICTORS:
        runs, postprocessing, tta, planes, device, batch_size = spec
        predictor = Predictor(tta, planes, device, batch_size, workers=1, progress=False).load_runs(runs)
        predictor.postprocessing = postprocessing
        _WORKER_PREDICTORS[spec] = predictor
    set_inference_threads()
    return _WORKER_PREDICTORS[spec]._predict_row(row, output_dir, register_seconds, dicom_source)
