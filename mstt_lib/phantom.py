"""A seeded synthetic cohort that looks like MSTT-199 to the pipeline.

MSTT-199 itself cannot be shared, so the book runs on a phantom cohort with the
paper's Table 1 tissue x site counts. Each case is an axial T1 and T2
fat-saturated MRI of a limb or trunk cross-section (skin, subcutaneous fat,
muscle groups with fat septa, bone cortex and marrow, vessels) with one tumour
whose size and appearance follow the paper by tissue type.

The anatomy is an analytic function of world coordinates (mm). Each modality
samples it on its own clinical grid (in-plane < 1 mm, slices 3-6 mm apart), and
the T1 sees the patient after a small recorded rigid motion, so registration can
be checked against the truth later (``phantom_truth.csv``). A multiplicative
bias field, Rician noise and, in some cases, motion ghosting complete the
picture. No library generates such phantoms, hence our own code.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mstt_lib.cohort import COHORT_FILE, TISSUES, write_cohort_table
from mstt_lib.engines import map_cases
from mstt_lib.geometry import axis_aligned_affine, euler_rotation, misalignment_matrix
from mstt_lib.io import atomic_path, save_nifti

__all__ = [
    "TABLE1",
    "DIAGNOSES",
    "PhantomSettings",
    "plan_cohort",
    "generate_case",
    "generate_cohort",
    "misalignment_matrix",
    "TRUTH_FILE",
]

TRUTH_FILE = "phantom_truth.csv"
SETTINGS_FILE = "phantom_settings.json"

# The paper's Table 1: tumour site -> counts for (Fibrous, Fat, Myxoid, Nerve, Vascular).
TABLE1: dict[str, tuple[int, int, int, int, int]] = {
    "thigh": (21, 35, 26, 10, 11),
    "leg": (5, 2, 2, 11, 5),
    "glute": (0, 2, 11, 3, 3),
    "forearm": (1, 0, 0, 4, 8),
    "arm": (1, 1, 0, 8, 0),
    "shoulder": (3, 0, 0, 0, 4),
    "pelvis": (1, 0, 0, 1, 2),
    "hand": (0, 0, 0, 1, 3),
    "foot": (1, 0, 0, 1, 1),
    "chest wall": (2, 0, 1, 0, 0),
    "neck": (2, 0, 0, 0, 1),
    "abdominal wall": (2, 0, 0, 0, 0),
    "axilla": (0, 0, 0, 1, 0),
    "back": (1, 0, 0, 0, 0),
    "flank": (0, 0, 0, 0, 1),
}

# Benign and malignant diagnoses of each tissue type (paper, section 2.1).
DIAGNOSES: dict[str, tuple[str, str]] = {
    "Fibrous": ("desmoid fibromatosis", "undifferentiated pleomorphic sarcoma"),
    "Fat": ("well-differentiated liposarcoma", "dedifferentiated liposarcoma"),
    "Myxoid": ("myxoma", "myxofibrosarcoma"),
    "Nerve": ("schwannoma", "malignant peripheral nerve sheath tumour"),
    "Vascular": ("hemangioma", "angiosarcoma"),
}

# Body cross-section semi-axes (mm) and shape per site.
_SITE_BODY: dict[str, tuple[str, float, float]] = {
    "thigh": ("limb", 72, 66),
    "leg": ("limb", 56, 50),
    "glute": ("trunk", 80, 58),
    "forearm": ("limb", 40, 33),
    "arm": ("limb", 48, 44),
    "shoulder": ("limb", 66, 58),
    "pelvis": ("trunk", 80, 58),
    "hand": ("limb", 44, 20),
    "foot": ("limb", 46, 26),
    "chest wall": ("trunk", 80, 56),
    "neck": ("limb", 54, 50),
    "abdominal wall": ("trunk", 80, 56),
    "axilla": ("limb", 62, 54),
    "back": ("trunk", 80, 56),
    "flank": ("trunk", 80, 56),
}

# (T1, T2 fat-sat) signal of the normal tissues, in [0, 1] before gain and bias.
_BACKGROUND, _SKIN, _FAT, _MUSCLE, _CORTEX, _MARROW, _ARTERY, _VEIN = range(8)
_SIGNAL = np.array(
    [
        (0.00, 0.00),  # background (air)
        (0.55, 0.40),  # skin
        (1.00, 0.12),  # subcutaneous fat and septa (suppressed on T2 fat-sat)
        (0.38, 0.22),  # muscle
        (0.03, 0.03),  # bone cortex
        (0.85, 0.10),  # fatty marrow
        (0.08, 0.06),  # artery: flow void
        (0.35, 0.55),  # slow-flow vein
    ],
    dtype=np.float32,
)

# Tumour size (largest semi-axis, mm) range by tissue: Fat large; Nerve and Vascular small.
_TUMOUR_RADIUS_MM = {
    "Fibrous": (11, 26),
    "Fat": (20, 36),
    "Myxoid": (12, 28),
    "Nerve": (7, 13),
    "Vascular": (3.5, 6.5),  # radius of each vessel loop of the serpiginous mass
}


@dataclass(frozen=True)
class PhantomSettings:
    """What shapes a generated cohort; saved beside it so a rerun can resume it."""

    n_cases: int = 199
    seed: int = 0
    version: int = 2  # of the generator: bump when its output changes, so old folders are refused
    matrix: int = 192  # in-plane voxels of the T2 (reference) grid
    n_slices: int = 20  # axial slices of the T2 grid
    noise: float = 0.02  # Rician noise sigma, as a fraction of the fat signal
    motion_rate: float = 0.1  # fraction of cases with motion ghosting in one modality


# ---------------------------------------------------------------------------
# The cohort plan: who has which tumour where.


def _largest_remainder(weights: np.ndarray, total: int) -> np.ndarray:
    """Integer counts proportional to ``weights`` that add up to ``total``."""
    if total == 0 or weights.sum() == 0:
        return np.zeros(len(weights), dtype=int)
    exact = weights / weights.sum() * total
    counts = np.floor(exact).astype(int)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[: total - counts.sum()]] += 1
    return counts


def plan_cohort(n_cases: int = 199, seed: int = 0) -> pd.DataFrame:
    """Case id, tissue, site, diagnosis and annotation modality of every case.

    With 199 cases the tissue x site counts are exactly the paper's Table 1.
    A smaller cohort keeps the tissues balanced (sizes differ by at most one)
    and spreads each tissue over sites in Table 1's proportions.
    """
    if n_cases < 1:
        raise ValueError(f"n_cases should be at least 1, got {n_cases}")
    sites = list(TABLE1)
    table = np.array([TABLE1[s] for s in sites])  # (site, tissue)
    if n_cases == int(table.sum()):
        per_tissue_sites = table.T
    else:
        per_tissue = _largest_remainder(np.ones(len(TISSUES)), n_cases)
        per_tissue_sites = np.stack(
            [_largest_remainder(table[:, t].astype(float), per_tissue[t]) for t in range(5)]
        )
    rng = np.random.default_rng([seed, 199])
    rows = []
    for t, tissue in enumerate(TISSUES):
        for s, site in enumerate(sites):
            for _ in range(per_tissue_sites[t, s]):
                rows.append((tissue, site))
    order = rng.permutation(len(rows))
    records = []
    for number, index in enumerate(order, start=1):
        tissue, site = rows[index]
        malignant = bool(rng.random() < 0.5)
        records.append(
            {
                "case_id": f"MSTT_{number:03d}",
                "tissue": tissue,
                "site": site,
                "diagnosis": DIAGNOSES[tissue][int(malignant)],
                "annotation_modality": "T1" if tissue == "Fat" else "T2",
            }
        )
    return pd.DataFrame.from_records(records)


# ---------------------------------------------------------------------------
# Geometry helpers.


def _world_points(shape, affine) -> np.ndarray:
    """World coordinates (mm) of every voxel centre, shape (*shape, 3), float32."""
    matrix = affine[:3, :3].astype(np.float32)
    points = np.empty((*shape, 3), dtype=np.float32)
    points[...] = affine[:3, 3].astype(np.float32)
    for axis, n in enumerate(shape):
        index = np.arange(n, dtype=np.float32).reshape([-1 if a == axis else 1 for a in range(3)] + [1])
        points += index * matrix[:, axis]
    return points


def _waves(rng: np.random.Generator, n: int, wavelength_mm: tuple[float, float]) -> np.ndarray:
    """Random plane waves (direction * wavenumber, phase): a cheap smooth texture."""
    directions = rng.normal(size=(n, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    k = 2 * np.pi / rng.uniform(*wavelength_mm, size=(n, 1))
    return np.concatenate([directions * k, rng.uniform(0, 2 * np.pi, size=(n, 1))], axis=1)


def _texture(points: np.ndarray, waves: np.ndarray) -> np.ndarray:
    """Sum of plane waves at ``points``, scaled to roughly [-1, 1]."""
    value = np.zeros(points.shape[:-1], dtype=np.float32)
    for wave in waves.astype(np.float32):
        value += np.sin(points @ wave[:3] + wave[3])
    return value / np.sqrt(len(waves) * 0.5) / 2.5


# ---------------------------------------------------------------------------
# One case's anatomy, as a function of world coordinates.


@dataclass
class _Anatomy:
    body: str
    semi_axes: tuple[float, float]
    taper: float
    skin_mm: float
    fat_mm: float
    bone_xy: tuple[float, float]
    bone_radii: tuple[float, float]  # outer (cortex), inner (marrow)
    vessels: list[tuple[float, float, float, int]]  # x, y, radius, kind
    septa: tuple[int, float]
    # Along the limb the anatomy changes (outline, septa, bone, vessels), so that the
    # scans can be registered along z too: (amplitude, wavelength mm, phase) waves.
    outline_wave: tuple[float, float, float]
    septa_twist: float  # radians per mm
    bone_wave: tuple[float, float, float]
    vessel_wave: tuple[float, float, float]
    tissue: str
    tumour_centre: np.ndarray
    tumour_radii: np.ndarray
    tumour_rotation: np.ndarray
    lobes: np.ndarray
    contrast: np.ndarray  # this tumour's (T1, T2) signal offset: tumours of a type vary
    chain: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))  # vascular spheres
    tumour_waves: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    muscle_waves: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))


def _draw_anatomy(rng: np.random.Generator, tissue: str, site: str, half_fov: float) -> _Anatomy:
    body, a, b = _SITE_BODY[site]
    size = rng.uniform(0.9, 1.1)
    a, b = min(a * size, 0.82 * half_fov), min(b * size, 0.82 * half_fov)
    skin = rng.uniform(1.5, 2.5)
    fat = rng.uniform(4, 9) if body == "limb" else rng.uniform(10, 18)
    inner = min(a, b) - skin - fat
    if body == "limb":
        bone_xy = tuple(rng.uniform(-0.15, 0.15, size=2) * np.array([a, b]))
        outer = rng.uniform(0.17, 0.22) * inner
    else:  # trunk: a posterior bone (vertebra, pelvis or rib) near the back
        bone_xy = (rng.uniform(-0.2, 0.2) * a, -0.55 * b)
        outer = rng.uniform(0.16, 0.2) * inner
    bone_radii = (outer, outer * rng.uniform(0.55, 0.7))
    vessels = []
    for kind in (_ARTERY, _VEIN, _VEIN):
        angle = rng.uniform(0, 2 * np.pi)
        dist = outer + rng.uniform(2, 6)
        vessels.append(
            (
                bone_xy[0] + dist * np.cos(angle),
                bone_xy[1] + dist * np.sin(angle),
                rng.uniform(1.5, 3.5),
                kind,
            )
        )

    # The tumour sits in the muscle compartment, on the side away from the bone.
    lo, hi = _TUMOUR_RADIUS_MM[tissue]
    limit = 0.5 * inner
    if tissue == "Vascular":
        base = rng.uniform(lo, hi)
        radii = np.array([base, base, base])
    elif tissue == "Nerve":
        across = rng.uniform(lo, hi)
        radii = np.array([across, across * rng.uniform(0.8, 1.0), across * rng.uniform(2.0, 3.0)])
    else:
        major = rng.uniform(lo, hi)
        radii = major * np.array([1.0, rng.uniform(0.7, 1.0), rng.uniform(0.8, 1.4)])
    radii[:2] = np.minimum(radii[:2], limit)
    away = np.arctan2(-bone_xy[1], -bone_xy[0]) if np.hypot(*bone_xy) > 1 else rng.uniform(0, 6.3)
    angle = away + rng.uniform(-0.6, 0.6)
    reach = max(inner - radii[:2].max() * 0.8, 0.0) * rng.uniform(0.35, 0.7)
    centre = np.array([reach * np.cos(angle), reach * np.sin(angle), rng.uniform(-6, 6)])
    if tissue == "Nerve":  # nerves run along the limb
        rotation = euler_rotation([rng.uniform(-10, 10), rng.uniform(-10, 10), 0.0])
    else:
        rotation = euler_rotation(rng.uniform(-30, 30, size=3))
    chain = np.zeros((0, 4))
    if tissue == "Vascular":  # a serpiginous tangle: spheres along a random walk
        n = int(rng.integers(7, 14))
        points = [centre.copy()]
        direction = rng.normal(size=3)
        for _ in range(n - 1):
            direction = direction / np.linalg.norm(direction) + rng.normal(scale=0.7, size=3)
            direction /= np.linalg.norm(direction)
            step = points[-1] + direction * base * 1.1
            step[:2] = np.clip(step[:2], centre[:2] - 18, centre[:2] + 18)
            points.append(step)
        chain = np.array([(*p, base * rng.uniform(0.7, 1.2)) for p in points])
    return _Anatomy(
        body=body,
        semi_axes=(a, b),
        taper=rng.uniform(-0.08, 0.02),
        skin_mm=skin,
        fat_mm=fat,
        bone_xy=bone_xy,
        bone_radii=bone_radii,
        vessels=vessels,
        septa=(int(rng.integers(3, 7)), rng.uniform(0, np.pi)),
        outline_wave=(rng.uniform(0.04, 0.08), rng.uniform(50, 90), rng.uniform(0, 2 * np.pi)),
        septa_twist=rng.uniform(0.004, 0.008) * rng.choice([-1, 1]),
        bone_wave=(rng.uniform(0.12, 0.2), rng.uniform(40, 70), rng.uniform(0, 2 * np.pi)),
        vessel_wave=(rng.uniform(2, 4), rng.uniform(30, 60), rng.uniform(0, 2 * np.pi)),
        tissue=tissue,
        tumour_centre=centre,
        tumour_radii=radii,
        tumour_rotation=rotation,
        lobes=np.concatenate([rng.uniform(0.04, 0.14, 1), rng.uniform(0, 2 * np.pi, 3)]),
        contrast=rng.normal(0, [0.05, 0.08]),
        chain=chain,
        tumour_waves=_waves(rng, 6, (6, 20)),
        muscle_waves=_waves(rng, 4, (15, 40)),
    )


def _tumour_box(anatomy: _Anatomy) -> tuple[np.ndarray, np.ndarray]:
    """Corners of a box (anatomy frame, mm) holding the tumour and its soft margin."""
    if anatomy.tissue == "Vascular":
        reach = anatomy.chain[:, 3:4] * 1.05
        return (anatomy.chain[:, :3] - reach).min(0), (anatomy.chain[:, :3] + reach).max(0)
    reach = anatomy.tumour_radii.max() * (1 + anatomy.lobes[0]) * 1.4
    return anatomy.tumour_centre - reach, anatomy.tumour_centre + reach


def _tumour_distance(anatomy: _Anatomy, points: np.ndarray) -> np.ndarray:
    """Normalised distance to the tumour: < 1 inside, 1 on its (lobulated) surface."""
    if anatomy.tissue == "Vascular":
        distance = np.full(points.shape[:-1], np.inf, dtype=np.float32)
        for x, y, z, r in anatomy.chain.astype(np.float32):
            d = np.sqrt((points[..., 0] - x) ** 2 + (points[..., 1] - y) ** 2 + (points[..., 2] - z) ** 2)
            np.minimum(distance, d / r, out=distance)
        return distance
    local = (points - anatomy.tumour_centre.astype(np.float32)) @ anatomy.tumour_rotation.astype(np.float32)
    scaled = local / anatomy.tumour_radii.astype(np.float32)
    norm = np.sqrt((scaled**2).sum(-1))
    unit = scaled / np.maximum(norm, 1e-6)[..., None]
    amp, p1, p2, p3 = anatomy.lobes.astype(np.float32)
    lobes = 1 + amp * (
        np.sin(3 * unit[..., 0] + p1) * np.sin(2 * unit[..., 1] + p2) + 0.5 * np.sin(4 * unit[..., 2] + p3)
    )
    return norm / lobes


def _tumour_signal(anatomy: _Anatomy, points: np.ndarray, distance: np.ndarray):
    """T1 and T2 signal of the tumour, and its blending weight (soft for ill-defined margins)."""
    texture = _texture(points, anatomy.tumour_waves)
    tissue = anatomy.tissue
    weight = (distance < 1).astype(np.float32)
    if tissue == "Fat":
        septa = np.abs(texture) < 0.06
        t1 = np.where(septa, 0.5, 0.93 + 0.03 * texture)
        t2 = np.where(septa, 0.35, 0.15 + 0.03 * texture)
    elif tissue == "Myxoid":
        septa = np.abs(texture) < 0.05
        t1 = 0.17 + 0.04 * texture
        t2 = np.where(septa, 0.55, 0.95 + 0.04 * texture)
    elif tissue == "Nerve":  # target sign: low-signal centre, bright rim on T2
        centre = np.clip(1 - distance / 0.6, 0, 1)
        t1 = 0.33 + 0.03 * texture
        t2 = 0.85 - 0.42 * centre + 0.04 * texture
    elif tissue == "Vascular":  # heterogeneous with fat strands and flow voids
        voids = texture > 0.45
        strands = texture < -0.5
        t1 = np.where(strands, 0.8, 0.4 + 0.08 * texture)
        t2 = np.where(voids, 0.06, 0.78 + 0.12 * texture)
        t1 = np.where(voids, 0.08, t1)
    else:  # Fibrous: heterogeneous, low to intermediate T2, ill-defined margins
        t1 = 0.3 + 0.06 * texture
        t2 = 0.38 + 0.16 * texture
        weight = 1 / (1 + np.exp(np.clip((distance - 1) / 0.08, -50, 50)))
    t1 = np.clip(t1 + anatomy.contrast[0], 0.02, 1.2)
    t2 = np.clip(t2 + anatomy.contrast[1], 0.02, 1.2)
    return t1.astype(np.float32), t2.astype(np.float32), weight.astype(np.float32)


def _render(anatomy: _Anatomy, points: np.ndarray):
    """T1 and T2 signal, tumour mask and body mask at anatomy-frame ``points``.

    Only points inside the body outline are worked on (air is a third of a scan).
    """
    shape = points.shape[:-1]
    flat = points.reshape(-1, 3)
    x, y, z = (np.ascontiguousarray(flat[:, i]) for i in range(3))
    amp, wavelength, phase = anatomy.outline_wave
    scale = (
        1
        + np.float32(anatomy.taper / 100) * z
        + np.float32(amp) * np.sin(z * (2 * np.pi / wavelength) + phase)
    )
    a, b = anatomy.semi_axes
    rho = np.sqrt((x / (a * scale)) ** 2 + (y / (b * scale)) ** 2)
    body = rho <= 1
    inside = np.flatnonzero(body)
    x, y, z, rho, scale, flat = x[inside], y[inside], z[inside], rho[inside], scale[inside], flat[inside]

    depth = (1 - rho) * min(a, b) * scale
    label = np.full(len(inside), _MUSCLE, dtype=np.uint8)
    label[depth < anatomy.skin_mm + anatomy.fat_mm] = _FAT
    label[depth < anatomy.skin_mm] = _SKIN
    count, phase = anatomy.septa
    muscle = (label == _MUSCLE) & (rho > 0.3)
    theta = np.arctan2(y[muscle], x[muscle]) - anatomy.septa_twist * z[muscle]
    septa = np.abs(np.sin(count * (theta - phase) / 2)) < 0.035
    label[np.flatnonzero(muscle)[septa]] = _FAT
    bx, by = anatomy.bone_xy
    bone_amp, bone_length, bone_phase = anatomy.bone_wave
    bone_scale = 1 + bone_amp * np.sin(z * (2 * np.pi / bone_length) + bone_phase)
    bone_r = np.sqrt((x - bx) ** 2 + (y - by) ** 2) / bone_scale
    outer, inner = anatomy.bone_radii
    label[bone_r < outer] = _CORTEX
    label[bone_r < inner] = _MARROW
    vessel_amp, vessel_length, vessel_phase = anatomy.vessel_wave
    wander = vessel_amp * np.sin(z * (2 * np.pi / vessel_length) + vessel_phase)
    for vx, vy, vr, kind in anatomy.vessels:
        label[(x - vx - wander) ** 2 + (y - vy) ** 2 < vr**2] = kind
    t1 = _SIGNAL[label, 0]
    t2 = _SIGNAL[label, 1]
    muscle = label == _MUSCLE
    muscle_texture = _texture(flat[muscle], anatomy.muscle_waves)
    t1[muscle] += 0.03 * muscle_texture
    t2[muscle] += 0.02 * muscle_texture

    # The tumour is evaluated only inside its bounding box: most voxels are far from it.
    low, high = _tumour_box(anatomy)
    near = np.all((flat >= low) & (flat <= high), axis=-1)
    allowed = (depth >= anatomy.skin_mm) & (bone_r >= outer)
    mask = np.zeros(len(inside), dtype=bool)
    near_points = flat[near]
    if len(near_points):
        distance = _tumour_distance(anatomy, near_points)
        tumour_t1, tumour_t2, weight = _tumour_signal(anatomy, near_points, distance)
        weight = weight * allowed[near]
        t1[near] = t1[near] * (1 - weight) + tumour_t1 * weight
        t2[near] = t2[near] * (1 - weight) + tumour_t2 * weight
        mask[near] = (distance < 1) & allowed[near]

    out = []
    for values, dtype in ((t1, np.float32), (t2, np.float32), (mask, bool)):
        full = np.zeros(body.size, dtype=dtype)
        full[inside] = values
        out.append(full.reshape(shape))
    return out[0], out[1], out[2], body.reshape(shape)


def _bias_field(rng: np.random.Generator, points: np.ndarray) -> np.ndarray:
    """A smooth multiplicative coil-sensitivity field of the scanner (world frame)."""
    c = rng.uniform(-0.12, 0.12, size=5).astype(np.float32)
    xn, yn, zn = (points[..., i] / 100 for i in range(3))
    return np.exp(c[0] * xn + c[1] * yn + c[2] * xn * yn + c[3] * xn**2 + c[4] * zn)


def _motion_ghosts(rng: np.random.Generator, volume: np.ndarray) -> np.ndarray:
    """Ghosting along the phase-encoding axis in some slices, as patient motion causes."""
    out = volume.copy()
    n_slices = volume.shape[2]
    chosen = rng.choice(n_slices, size=max(1, n_slices // 3), replace=False)
    ky = np.fft.fftfreq(volume.shape[1])
    for k in chosen:
        spectrum = np.fft.fft2(volume[:, :, k])
        lines = rng.random(volume.shape[1]) < 0.3
        shift = rng.uniform(2, 6)
        spectrum[:, lines] *= np.exp(-2j * np.pi * shift * ky[lines])
        out[:, :, k] = np.abs(np.fft.ifft2(spectrum))
    return out


def _rician(rng: np.random.Generator, signal: np.ndarray, sigma: float) -> np.ndarray:
    """Magnitude of a complex signal with Gaussian noise in both channels, as MRI has."""
    real = signal + np.float32(sigma) * rng.standard_normal(signal.shape, dtype=np.float32)
    imag = np.float32(sigma) * rng.standard_normal(signal.shape, dtype=np.float32)
    return np.sqrt(real * real + imag * imag)


# ---------------------------------------------------------------------------
# One case, and the whole cohort.


def generate_case(case: dict, index: int, settings: PhantomSettings) -> dict:
    """Sample one case's T1, T2 and mask; returns the arrays, affines and the truth row.

    Deterministic in (settings.seed, index): a case does not depend on the
    others, so cases can be made in parallel and resumed.
    """
    rng = np.random.default_rng([settings.seed, index, 7])
    t2_spacing = np.array([*(2 * [0.0]), rng.uniform(3.5, 6.0)])
    body_diameter = 2 * max(_SITE_BODY[case["site"]][1:]) * 1.25
    t2_spacing[:2] = np.clip(body_diameter / settings.matrix, 0.55, 0.95)
    t2_shape = (settings.matrix, settings.matrix, settings.n_slices)
    half_fov = settings.matrix * t2_spacing[0] / 2
    table_z = rng.uniform(-40, 40)  # where the slab sits along the scanner bore
    centre = np.array([rng.uniform(-5, 5), rng.uniform(-5, 5), table_z])
    t2_affine = axis_aligned_affine(t2_shape, t2_spacing, "LPS", centre)

    t1_inplane = np.clip(t2_spacing[0] * rng.uniform(0.9, 1.2), 0.5, 0.95)
    t1_spacing = np.array([t1_inplane, t1_inplane, rng.uniform(3.0, 6.0)])
    fov_t1 = 2 * half_fov * rng.uniform(0.95, 1.08)
    t1_matrix = int(round(fov_t1 / t1_spacing[0] / 16) * 16)
    t1_slices = int(round(settings.n_slices * t2_spacing[2] / t1_spacing[2]))
    t1_shape = (t1_matrix, t1_matrix, max(t1_slices, 8))
    t1_affine = axis_aligned_affine(t1_shape, t1_spacing, "RAS", centre + rng.uniform(-3, 3, 3))

    truth = {
        "case_id": case["case_id"],
        "rot_x_deg": rng.uniform(-1.5, 1.5),
        "rot_y_deg": rng.uniform(-1.5, 1.5),
        "rot_z_deg": rng.uniform(-3, 3),
        "shift_x_mm": rng.uniform(-4, 4),
        "shift_y_mm": rng.uniform(-4, 4),
        "shift_z_mm": rng.uniform(-3, 3),
        "centre_x_mm": centre[0],
        "centre_y_mm": centre[1],
        "centre_z_mm": centre[2],
    }
    anatomy = _draw_anatomy(rng, case["tissue"], case["site"], half_fov)
    motion = rng.random() < settings.motion_rate
    truth["motion_artefact"] = str(rng.choice(["T1", "T2"])) if motion else "none"
    truth["body"] = anatomy.body

    # T2 is the reference scan: its world frame is the anatomy frame (shifted to the table).
    t2_world = _world_points(t2_shape, t2_affine)
    t2_points = t2_world - centre.astype(np.float32)
    _, t2_signal, mask, body = _render(anatomy, t2_points)
    # T1: the patient moved; a T1 voxel at world x shows the anatomy at M^-1(x).
    to_t2 = np.linalg.inv(misalignment_matrix(truth)).astype(np.float32)
    t1_world = _world_points(t1_shape, t1_affine)
    t1_points = t1_world @ to_t2[:3, :3].T + to_t2[:3, 3] - centre.astype(np.float32)
    t1_signal, _, _, _ = _render(anatomy, t1_points)

    volumes = {}
    for name, signal, world in (("T1", t1_signal, t1_world), ("T2", t2_signal, t2_world)):
        gain = rng.uniform(700, 1300)
        image = signal * _bias_field(rng, world)
        if truth["motion_artefact"] == name:
            image = _motion_ghosts(rng, image)
        image = _rician(rng, image, settings.noise)
        volumes[name] = np.clip(np.round(image * gain), 0, 32767).astype(np.int16)

    voxel_ml = float(np.prod(t2_spacing)) / 1000
    truth["tumour_volume_ml"] = float(mask.sum()) * voxel_ml
    truth["tumour_inside_body"] = bool(np.all(body[mask]))
    return {
        "T1": (volumes["T1"], t1_affine),
        "T2": (volumes["T2"], t2_affine),
        "mask": (mask.astype(np.uint8), t2_affine),
        "truth": truth,
    }


def _write_case(args: tuple[dict, int, PhantomSettings, str]) -> dict:
    """Generate and write one case folder atomically: built beside, then renamed."""
    case, index, settings, out_dir = args
    final = Path(out_dir) / case["case_id"]
    truth_file = final / "truth.json"
    if truth_file.is_file():  # finished earlier: resume
        return json.loads(truth_file.read_text())
    staging = Path(out_dir) / f".{case['case_id']}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    result = generate_case(case, index, settings)
    for key, name in (("T1", "t1.nii.gz"), ("T2", "t2.nii.gz"), ("mask", "mask.nii.gz")):
        data, affine = result[key]
        save_nifti(data, affine, staging / name)
    (staging / "truth.json").write_text(json.dumps(result["truth"], indent=1))
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)
    return result["truth"]


def generate_cohort(
    out_dir: str | Path,
    settings: PhantomSettings | None = None,
    workers: int = 2,
    progress: bool = True,
    engine: str | None = None,
) -> Path:
    """Write the synthetic cohort in the project layout and return ``cohort.csv``'s path.

    Layout: ``<out_dir>/<case_id>/{t1,t2,mask}.nii.gz``, ``cohort.csv`` (the case
    table), ``phantom_truth.csv`` (the recorded T1 misalignment and true tumour
    volume per case) and ``phantom_settings.json``. An interrupted run resumes:
    finished cases are kept. A folder made with other settings (or an older
    generator) is refused. ``engine``: where the cases are made (``mstt_lib.engines``).
    """
    settings = settings or PhantomSettings()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings_file = out_dir / SETTINGS_FILE
    if settings_file.is_file():
        existing = json.loads(settings_file.read_text())
        if existing != asdict(settings):
            raise ValueError(
                f"{out_dir} holds a synthetic cohort made with other settings "
                f"({existing}, asked for {asdict(settings)}); choose another folder or delete it"
            )
        if (out_dir / COHORT_FILE).is_file() and (out_dir / TRUTH_FILE).is_file():
            return out_dir / COHORT_FILE
    else:
        with atomic_path(settings_file) as tmp:  # a stop mid-write leaves no truncated file to refuse
            tmp.write_text(json.dumps(asdict(settings), indent=1))

    plan = plan_cohort(settings.n_cases, settings.seed)
    jobs = [(row, i, settings, str(out_dir)) for i, row in enumerate(plan.to_dict("records"))]
    truths = map_cases(
        _write_case, jobs, workers, engine, progress=progress, desc="synthetic cohort", chunksize=4
    )

    truth = pd.DataFrame(truths)
    with atomic_path(out_dir / TRUTH_FILE) as tmp:
        truth.to_csv(tmp, index=False)
    table = plan.assign(
        t1=[f"{c}/t1.nii.gz" for c in plan.case_id],
        t2=[f"{c}/t2.nii.gz" for c in plan.case_id],
        mask=[f"{c}/mask.nii.gz" for c in plan.case_id],
    )
    return write_cohort_table(table, out_dir)
