"""Synthetic cohorts with a planted, documented signal, for tests, demos and benchmarks.

Everything here is a deterministic function of ``seed`` (a :class:`numpy.random.Generator`
per patient and per scan, spawned from one :class:`numpy.random.SeedSequence`), so a test or
a benchmark can regenerate the exact same voxels anywhere. Files are NIfTI (``.nii.gz``)
written with SimpleITK. Shapes and spacings are given in SimpleITK's ``(x, y, z)`` order.

:func:`make_cohort` -- CT-like chest scans with one lesion each
----------------------------------------------------------------
Each scan is an int16 HU volume: air (-1000 HU), a body ellipse (subcutaneous fat ring at
-90 HU around soft tissue at 40 HU with smooth 12 HU variation), two lung ellipsoids
(-830 HU with smooth 25 HU variation) and one lesion, the mask's label 1, placed in one lung.
White scanner noise (sd 10 HU at site A) covers the whole volume.

Every patient has a binary ``outcome`` y (exactly half the patients are 1, in a seeded
random order) and a latent aggressiveness ``z = y + 0.4 N``, N standing here for a fresh
standard normal draw each time. With ``s = signal`` (``s = 0``: nothing depends on y or z),
the lesion is generated from z only:

Equivalent radius
    ``r0 * (1 + 0.4 s z) * exp(0.08 N)``, clipped to ``[0.4 r0, 2.2 r0]``, where ``r0`` is
    10% of the smallest field-of-view side (5.1 mm at the default geometry). Moves the shape
    features VoxelVolume, MeshVolume, Maximum3DDiameter, SurfaceArea, and every count-like
    texture feature with them.
Lobulation
    The surface sits at normalised radius ``1 + A g(u)``, g the mean of three random cosine
    waves over the direction u, with ``A = clip(0.04 + 0.22 s z, 0, 0.35)``: lobulated when
    z is large, a near-smooth ellipsoid when small. Lowers shape Sphericity.
Mean intensity
    ``30 + 30 s z + 6 N`` HU (before the site offset). Moves firstorder Mean and Median.
Texture amplitude
    The lesion is its mean plus ``max(4, 8 + 28 s z)`` HU times unit-variance smoothed noise
    (scanner noise comes on top). Moves firstorder Variance, Entropy, Range and glcm
    Contrast.
Texture grain
    That noise is Gaussian-smoothed with ``sigma = max(0.4, 0.8 + 1.6 s z)`` mm: coarse when
    z is large, nearly white when small. Moves glcm Correlation and the run and zone
    lengths of glrlm and glszm.
Nuisance, same law for every class
    Elongation (semi-axes in [0.8, 1.25]), orientation, lung side and position.

So at ``signal=1`` outcome-1 lesions are about 1.4 times the radius (2.7 times the volume),
lobulated, 30 HU denser and coarsely heterogeneous; outcome-0 lesions are small, smooth and
homogeneous. A cross-validated logistic regression on just log voxel count, lesion mean and
lesion sd reaches an AUC of about 0.97 on 80 cases at ``signal=1`` (0.95 at 0.5) and is at
chance at ``signal=0``; radiomics shape and texture features should do at least as well.

Survival (months) is patient-level and depends on two lesion properties only, each drawn
from its own standard normal factor (u1, u2), independent of y, z and the site:

Flatness (u1)
    The lesion's semi-axes are ``(1, b, f)`` before scaling to the equivalent radius, with
    ``b ~ Uniform(0.9, 1)`` and ``f = clip(0.65 + 0.14 u1, 0.35, 0.88)``: the least axis over
    the largest, what pyradiomics reports as shape ``Flatness``.
Intensity skewness (u2)
    The lesion's texture noise goes through Tukey's g transform ``(exp(g t) - 1) / g`` with
    ``g = clip(0.7 u2, -1, 1)`` and is re-standardised (same mean and amplitude): what
    pyradiomics reports as firstorder ``Skewness`` (diluted by the scanner noise).

The event time is ``T ~ Exponential`` with hazard ``ln(2) / 24 * exp(s * (2 u1 + 2 u2))``
(median 24 months at ``s = 0``), independently censored by ``C ~ Exponential`` with rate
``ln(2) / 72`` (about 30% censored at ``s = 1``); ``survival_time = min(T, C)``,
``event = T <= C``. So ``original_shape_Flatness`` and ``original_firstorder_Skewness`` are
the two planted survival features: a univariate Cox screen ranks them first (hazard ratio
above 1 per SD), and a Cox model on them reaches a C-index of about 0.8. Survival does not
depend on the outcome y.

Site (batch) effect, independent of the outcome: patients are spread over ``n_sites`` sites
named ``A``, ``B``, ... evenly within each outcome class. Site k (0 for A) adds ``15 k`` HU to
every voxel of the body (lesion included) and multiplies the scanner noise sd by
``1 + 0.25 k``. Harmonisation (e.g. ComBat) should remove it without touching the outcome
signal; a model that learns the site has learnt nothing about the outcome.

With ``scans_per_patient > 1`` a patient's scans share outcome, survival, site and lesion
(the same shape and lobulation pattern) with small changes per scan: radius times
``1 + 0.04 N``, centre moved by up to 5% of the lung's semi-axes, mean ``+ 3 N`` HU, texture
amplitude times ``1 + 0.05 N``, and new scanner noise (the tissue pattern is the lesion's own,
drawn from its seed on the changed geometry). Such scans must stay in one fold of a
cross-validation.

Test-retest: ``retests=k`` adds, for each of the first k patients, one more scan of the same
lesion taken at once: the same lesion and tissue pattern, its centre moved by up to 5% of the
lung's semi-axes, new scanner noise. It is named ``<case_id>-retest`` and points at the
patient's first scan in the manifest's ``retest_of`` column (empty for the others).
``retest_shift_hu`` adds a random offset ``retest_shift_hu * N`` HU to the lesion only in
those retest scans: the lesion's intensity level (firstorder Mean, Median, percentiles,
RootMeanSquared, ...) then no longer reproduces, while shape and Skewness (which ignore a
shift) do: a feature made unstable on purpose, for stability filters.

:func:`make_atlas` -- one brain-like MR volume with many labels
----------------------------------------------------------------
An int16 T1-like volume (scalp, skull, CSF rim, grey and white matter, ventricles, a smooth
bias field and noise) and a uint16 mask partitioning the brain into ``n_labels`` contiguous
regions: Voronoi cells of seed points evened out by a few Lloyd iterations, so every label has
a comparable number of voxels. It carries no outcome; it exists to test many-label
extraction.
"""

from __future__ import annotations

import math
import pathlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from os import PathLike

import numpy as np
import pandas as pd
import SimpleITK as sitk
from scipy import ndimage
from scipy.spatial import cKDTree

from .errors import SpecError

__all__ = ["make_cohort", "make_atlas"]

# Tissue intensities (HU) of the CT-like scans.
_AIR_HU = -1000.0
_FAT_HU = -90.0
_TISSUE_HU = 40.0
_LUNG_HU = -830.0
_NOISE_SD_HU = 10.0
# Batch effect per site index k: +15 k HU in the body, noise sd x (1 + 0.25 k).
_SITE_OFFSET_HU = 15.0
_SITE_NOISE_STEP = 0.25
# Within-class spread of the latent aggressiveness z (class means are 0 and 1).
_Z_SD = 0.4
_MEDIAN_SURVIVAL_MONTHS = 24.0
# Censoring rate a third of the baseline hazard: P(censored) = 1/4 when the hazard is baseline.
_CENSOR_RATE = math.log(2) / _MEDIAN_SURVIVAL_MONTHS / 3.0
_LOBULATION_FREQ = 6.0
# Survival factors: flatness (least / largest semi-axis) and intensity skewness.
_FLATNESS_MEAN = 0.65
_FLATNESS_SD = 0.14
_SKEW_SD = 0.7
_HR_FLATNESS = 2.0
_HR_SKEW = 2.0
# Atlas: every region must have at least this many voxels on average (Lloyd's iterations
# keep the smallest above about half the mean).
_MIN_MEAN_REGION_VOXELS = 600


@dataclass(frozen=True)
class _Lesion:
    """One lesion's generating parameters; lengths in mm, vectors in numpy (z, y, x) order."""

    radius_mm: float
    axes: np.ndarray  # relative semi-axes, product 1, so radius_mm is the equivalent radius
    rotation: np.ndarray  # columns: the lesion's axes in image space
    lobulation: float
    waves: np.ndarray  # (3, 3) unit vectors of the lobulation waves
    phases: np.ndarray
    mean_hu: float
    texture_sd: float
    texture_corr_mm: float
    skew: float  # Tukey g of the texture's intensity distribution (0: symmetric)
    side: int  # which lung: -1 or +1 along x
    offset: np.ndarray  # centre offset within the lung, as a fraction of its semi-axes
    texture_seed: int  # the lesion's tissue pattern: the same on every scan of the same geometry


def make_cohort(
    out_dir: str | PathLike[str],
    n_cases: int = 40,
    *,
    seed: int = 0,
    shape: Sequence[int] = (64, 64, 32),
    spacing: Sequence[float] = (0.8, 0.8, 2.5),
    scans_per_patient: int = 1,
    n_sites: int = 2,
    signal: float = 1.0,
    retests: int = 0,
    retest_shift_hu: float = 0.0,
) -> pathlib.Path:
    """Write a synthetic CT-like cohort with a planted outcome, survival and site signal.

    The generating model is described in the module docstring (:mod:`radcluster.synth`).

    Parameters
    ----------
    out_dir : str or path-like
        Folder to write into (created if missing). Files of the same names are overwritten;
        other files are left alone, so the manifest is the list of what belongs to the cohort.
    n_cases : int, default 40
        Number of scans (rows of the manifest), at least 2.
    seed : int, default 0
        Seed of every random draw; the same arguments give the same voxels and manifest.
    shape : sequence of 3 int, default (64, 64, 32)
        Image size in voxels, SimpleITK ``(x, y, z)`` order; each at least 16.
    spacing : sequence of 3 float, default (0.8, 0.8, 2.5)
        Voxel size in mm, ``(x, y, z)`` order.
    scans_per_patient : int, default 1
        Scans per patient; patients are ``ceil(n_cases / scans_per_patient)``, the last one
        may have fewer scans. Scans of a patient share ``patient_id``, outcome, survival,
        site and a similar lesion.
    n_sites : int, default 2
        Number of acquisition sites (``A``, ``B``, ...), between 1 and 26.
    signal : float, default 1.0
        Strength of the planted effects (lesion size, shape, intensity, texture, hazard);
        0 makes every property independent of the outcome. Must be in [0, 3].
    retests : int, default 0
        Patients (the first ones) that get one retest scan each (see the module docstring).
    retest_shift_hu : float, default 0.0
        Standard deviation (HU) of a lesion intensity offset applied to retest scans only.

    Returns
    -------
    pathlib.Path
        ``out_dir / "manifest.csv"`` with columns ``case_id, image, mask, patient_id,
        outcome, survival_time, event, site`` (and ``retest_of`` with ``retests``); ``image``
        and ``mask`` are relative to the manifest's folder (``images/<case_id>.nii.gz``, ``masks/<case_id>.nii.gz``).

    Raises
    ------
    SpecError
        If an argument is out of range; the message names it and the accepted values.

    Examples
    --------
    >>> import tempfile
    >>> import pandas as pd
    >>> from radcluster.synth import make_cohort
    >>> manifest = make_cohort(tempfile.mkdtemp(), n_cases=6, shape=(32, 32, 16))
    >>> table = pd.read_csv(manifest)
    >>> table["case_id"].tolist()[:2], int(table["outcome"].sum())
    (['synth-0001', 'synth-0002'], 3)
    >>> table.loc[0, "image"]
    'images/synth-0001.nii.gz'
    """
    n_cases = _check_int("n_cases", n_cases, low=2)
    seed = _check_int("seed", seed, low=0)
    scans_per_patient = _check_int("scans_per_patient", scans_per_patient, low=1)
    n_sites = _check_int("n_sites", n_sites, low=1, high=26)
    retests = _check_int("retests", retests, low=0)
    if isinstance(retest_shift_hu, bool) or not (
        isinstance(retest_shift_hu, int | float | np.integer | np.floating) and 0 <= float(retest_shift_hu) <= 500
    ):
        raise SpecError(
            "make_cohort argument 'retest_shift_hu'", "must be a number in [0, 500]", f"got {retest_shift_hu!r}"
        )
    shape_zyx = _check_shape(shape, minimum=16)
    spacing_zyx = _check_spacing(spacing)
    if isinstance(signal, bool) or not (
        isinstance(signal, int | float | np.integer | np.floating) and 0.0 <= float(signal) <= 3.0
    ):
        raise SpecError("make_cohort argument 'signal'", "must be a number in [0, 3]", f"got {signal!r}")
    signal = float(signal)

    out = pathlib.Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)

    n_patients = math.ceil(n_cases / scans_per_patient)
    if retests > n_patients:
        raise SpecError(
            "make_cohort argument 'retests'", f"must be at most the number of patients ({n_patients})", f"got {retests}"
        )
    root = np.random.SeedSequence(seed)
    cohort_ss, patients_ss, scans_ss, retest_ss = root.spawn(4)
    cohort_rng = np.random.default_rng(cohort_ss)
    outcome = cohort_rng.permutation(np.arange(n_patients) % 2)
    site = _balanced_sites(cohort_rng, outcome, n_sites)
    z = outcome + _Z_SD * cohort_rng.standard_normal(n_patients)
    u = cohort_rng.standard_normal((n_patients, 2))  # the two survival factors, independent of z
    time, event = _survival(cohort_rng, u, signal)

    fov_mm = np.asarray(shape_zyx) * spacing_zyx
    base_radius = 0.10 * float(fov_mm.min())
    patient_rngs = [np.random.default_rng(s) for s in patients_ss.spawn(n_patients)]
    lesions = [
        _draw_lesion(r, float(zi), ui, signal, base_radius) for r, zi, ui in zip(patient_rngs, z, u, strict=True)
    ]

    width = max(4, len(str(n_cases)))
    p_width = max(4, len(str(n_patients)))
    scans = [(case, case // scans_per_patient, scan_ss, None) for case, scan_ss in enumerate(scans_ss.spawn(n_cases))]
    first_scan = {p: case for case, p, _, _ in reversed(scans)}
    scans += [(n_cases + p, p, ss, first_scan[p]) for p, ss in enumerate(retest_ss.spawn(retests))]
    rows = []
    for case, p, scan_ss, retest_of in scans:
        rng = np.random.default_rng(scan_ss)
        if retest_of is not None:
            lesion = _retest(rng, lesions[p], retest_shift_hu)
        else:
            lesion = lesions[p] if case % scans_per_patient == 0 else _rescan(rng, lesions[p])
        base_id = f"synth-{(case if retest_of is None else retest_of) + 1:0{width}d}"
        case_id = base_id if retest_of is None else f"{base_id}-retest"
        image, mask = _render_ct(rng, lesion, int(site[p]), shape_zyx, spacing_zyx)
        image_rel = f"images/{case_id}.nii.gz"
        mask_rel = f"masks/{case_id}.nii.gz"
        _write(image, spacing_zyx, out / image_rel)
        _write(mask, spacing_zyx, out / mask_rel)
        rows.append(
            {
                "case_id": case_id,
                "image": image_rel,
                "mask": mask_rel,
                "patient_id": f"synth-p{p + 1:0{p_width}d}",
                "outcome": int(outcome[p]),
                "survival_time": float(time[p]),
                "event": int(event[p]),
                "site": chr(ord("A") + int(site[p])),
            }
        )
        if retests:
            rows[-1]["retest_of"] = base_id if retest_of is not None else None
    manifest = out / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest


def make_atlas(
    out_dir: str | PathLike[str],
    n_labels: int = 100,
    *,
    seed: int = 0,
    shape: Sequence[int] = (90, 180, 150),
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
) -> tuple[pathlib.Path, pathlib.Path, pathlib.Path]:
    """Write a brain-like MR volume, a many-label parcellation of it and its label table.

    Parameters
    ----------
    out_dir : str or path-like
        Folder to write into (created if missing); existing atlas files are overwritten.
    n_labels : int, default 100
        Number of regions, labelled ``1..n_labels`` (0 is background). The brain must hold
        at least 600 voxels per label on average, so large counts need a large ``shape``.
    seed : int, default 0
        Seed of every random draw (intensities, noise and region seeds).
    shape : sequence of 3 int, default (90, 180, 150)
        Image size in voxels, SimpleITK ``(x, y, z)`` order; each at least 16.
    spacing : sequence of 3 float, default (1.0, 1.0, 1.0)
        Voxel size in mm, ``(x, y, z)`` order.

    Returns
    -------
    tuple of pathlib.Path
        ``(image, mask, label_table)``: ``atlas_image.nii.gz`` (int16), ``atlas_mask.nii.gz``
        (uint16, same geometry) and ``atlas_labels.tsv`` with columns ``label`` and ``name``
        (``region_001``, ...).

    Raises
    ------
    SpecError
        If an argument is out of range or the brain is too small for ``n_labels`` regions.

    Examples
    --------
    >>> import tempfile
    >>> import SimpleITK as sitk
    >>> from radcluster.synth import make_atlas
    >>> image, mask, table = make_atlas(tempfile.mkdtemp(), n_labels=5, shape=(40, 48, 40))
    >>> labels = sitk.GetArrayFromImage(sitk.ReadImage(str(mask)))
    >>> sorted(set(labels.ravel().tolist()))
    [0, 1, 2, 3, 4, 5]
    """
    n_labels = _check_int("n_labels", n_labels, low=1, high=65535)
    seed = _check_int("seed", seed, low=0)
    shape_zyx = _check_shape(shape, minimum=16)
    spacing_zyx = _check_spacing(spacing)
    rng = np.random.default_rng(seed)

    # Normalised radius of every voxel in the head ellipsoid (1 on the scalp surface).
    coords = [(np.arange(n) - (n - 1) / 2) / (0.47 * n) for n in shape_zyx]
    zz, yy, xx = np.meshgrid(*coords, indexing="ij", sparse=True)
    radius = np.sqrt(zz**2 + yy**2 + xx**2, dtype=np.float32)
    wobble = _upsampled_noise(rng, shape_zyx, cell=12)
    brain = radius <= 0.84
    n_brain = int(brain.sum())
    if n_brain < n_labels * _MIN_MEAN_REGION_VOXELS:
        raise SpecError(
            "make_atlas argument 'n_labels'",
            f"n_labels={n_labels} needs at least {_MIN_MEAN_REGION_VOXELS} brain voxels per label, but "
            f"shape={tuple(shape)} holds {n_brain} brain voxels",
            f"use a larger 'shape' or at most {n_brain // _MIN_MEAN_REGION_VOXELS} labels",
        )

    t1 = np.zeros(shape_zyx, dtype=np.float32)
    t1[radius <= 1.0] = 420.0  # scalp
    t1[radius <= 0.93] = 60.0  # skull
    t1[brain] = 180.0  # CSF rim
    t1[radius + 0.03 * wobble <= 0.80] = 600.0  # grey matter
    # A wobbly white-matter boundary, so the grey-white contrast is not a plain shell.
    t1[radius + 0.06 * wobble <= 0.58] = 850.0
    for side in (-1.0, 1.0):
        ventricle = ((zz - 0.05) / 0.20) ** 2 + (yy / 0.30) ** 2 + ((xx - 0.08 * side) / 0.06) ** 2 <= 1.0
        t1[ventricle & brain] = 180.0
    bias = 1.0 + 0.08 * _upsampled_noise(rng, shape_zyx, cell=40)
    t1 = t1 * bias + rng.normal(0.0, 15.0, shape_zyx).astype(np.float32)
    image = np.clip(np.rint(t1), 0, 32767).astype(np.int16)

    labels = _voronoi_labels(rng, brain, spacing_zyx, n_labels)

    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    image_path = out / "atlas_image.nii.gz"
    mask_path = out / "atlas_mask.nii.gz"
    table_path = out / "atlas_labels.tsv"
    _write(image, spacing_zyx, image_path)
    _write(labels, spacing_zyx, mask_path)
    width = max(3, len(str(n_labels)))
    names = [f"region_{i:0{width}d}" for i in range(1, n_labels + 1)]
    pd.DataFrame({"label": np.arange(1, n_labels + 1), "name": names}).to_csv(table_path, sep="\t", index=False)
    return image_path, mask_path, table_path


# --- argument checks -------------------------------------------------------------------


def _check_int(name: str, value: object, *, low: int, high: int | None = None) -> int:
    ok = isinstance(value, int | np.integer) and not isinstance(value, bool)
    if ok and low <= int(value) and (high is None or int(value) <= high):
        return int(value)
    upper = f" and at most {high}" if high is not None else ""
    raise SpecError(f"argument {name!r}", f"must be an integer at least {low}{upper}", f"got {value!r}")


def _as_tuple(value: object) -> tuple:
    try:
        return tuple(value)  # type: ignore[call-overload]
    except TypeError:
        return ()


def _check_shape(shape: Sequence[int], *, minimum: int) -> tuple[int, int, int]:
    """Validate an ``(x, y, z)`` size and return it in numpy ``(z, y, x)`` order."""
    values = _as_tuple(shape)
    if len(values) != 3 or not all(
        isinstance(v, int | np.integer) and not isinstance(v, bool) and v >= minimum for v in values
    ):
        raise SpecError("argument 'shape'", f"must be 3 integers (x, y, z), each at least {minimum}", f"got {shape!r}")
    return int(values[2]), int(values[1]), int(values[0])


def _check_spacing(spacing: Sequence[float]) -> np.ndarray:
    """Validate an ``(x, y, z)`` voxel size in mm and return it in ``(z, y, x)`` order."""
    values = _as_tuple(spacing)
    if len(values) != 3 or not all(
        isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool) and math.isfinite(v) and v > 0
        for v in values
    ):
        raise SpecError("argument 'spacing'", "must be 3 positive numbers in mm (x, y, z)", f"got {spacing!r}")
    return np.array(values[::-1], dtype=float)


# --- cohort ------------------------------------------------------------------------------


def _balanced_sites(rng: np.random.Generator, outcome: np.ndarray, n_sites: int) -> np.ndarray:
    # Dealt round-robin within each outcome class, so the site cannot stand in for the outcome.
    site = np.empty(outcome.size, dtype=int)
    for value in (0, 1):
        members = rng.permutation(np.flatnonzero(outcome == value))
        site[members] = (np.arange(members.size) + rng.integers(n_sites)) % n_sites
    return site


def _survival(rng: np.random.Generator, u: np.ndarray, signal: float) -> tuple[np.ndarray, np.ndarray]:
    baseline = math.log(2) / _MEDIAN_SURVIVAL_MONTHS
    hazard = baseline * np.exp(signal * (_HR_FLATNESS * u[:, 0] + _HR_SKEW * u[:, 1]))
    event_time = rng.exponential(1.0 / hazard)
    censor_time = rng.exponential(1.0 / _CENSOR_RATE, size=len(u))
    event = (event_time <= censor_time).astype(int)
    # Two decimals keep the CSV readable; the floor keeps every time strictly positive.
    time = np.maximum(np.round(np.minimum(event_time, censor_time), 2), 0.01)
    return time, event


def _draw_lesion(rng: np.random.Generator, z: float, u: np.ndarray, signal: float, base_radius: float) -> _Lesion:
    sz = signal * z
    radius = base_radius * float(np.clip((1 + 0.4 * sz) * math.exp(0.08 * rng.standard_normal()), 0.4, 2.2))
    flat = float(np.clip(_FLATNESS_MEAN + _FLATNESS_SD * u[0], 0.35, 0.88))
    axes = np.array([1.0, rng.uniform(0.9, 1.0), flat])
    axes /= np.cbrt(axes.prod())
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    rotation = q * np.sign(np.diag(r))
    waves = rng.standard_normal((3, 3))
    waves /= np.linalg.norm(waves, axis=1, keepdims=True)
    return _Lesion(
        radius_mm=radius,
        axes=axes,
        rotation=rotation,
        lobulation=float(np.clip(0.04 + 0.22 * sz, 0.0, 0.35)),
        waves=waves,
        phases=rng.uniform(0, 2 * math.pi, 3),
        mean_hu=30.0 + 30.0 * sz + 6.0 * float(rng.standard_normal()),
        texture_sd=max(4.0, 8.0 + 28.0 * sz),
        texture_corr_mm=max(0.4, 0.8 + 1.6 * sz),
        skew=float(np.clip(_SKEW_SD * u[1], -1.0, 1.0)),
        side=int(rng.choice([-1, 1])),
        offset=rng.uniform(-0.3, 0.3, 3),
        texture_seed=int(rng.integers(2**32)),
    )


def _rescan(rng: np.random.Generator, lesion: _Lesion) -> _Lesion:
    """The same patient's lesion on another scan: same shape, small changes."""
    return replace(
        lesion,
        radius_mm=lesion.radius_mm * (1 + 0.04 * float(rng.standard_normal())),
        mean_hu=lesion.mean_hu + 3.0 * float(rng.standard_normal()),
        texture_sd=lesion.texture_sd * (1 + 0.05 * float(rng.standard_normal())),
        offset=lesion.offset + rng.uniform(-0.05, 0.05, 3),
    )


def _retest(rng: np.random.Generator, lesion: _Lesion, shift_hu: float) -> _Lesion:
    """The same lesion scanned again at once: repositioned, new scanner noise; its intensity
    shifted by ``shift_hu * N`` HU when asked (the unstable-on-purpose feature)."""
    moved = replace(lesion, offset=lesion.offset + rng.uniform(-0.05, 0.05, 3))
    if shift_hu > 0:
        moved = replace(moved, mean_hu=lesion.mean_hu + shift_hu * float(rng.standard_normal()))
    return moved


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma_vox: np.ndarray) -> np.ndarray:
    """Gaussian-smoothed white noise rescaled to unit standard deviation."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=sigma_vox, mode="reflect")
    sd = field.std()
    return field / sd if sd > 0 else field


def _render_ct(
    rng: np.random.Generator,
    lesion: _Lesion,
    site: int,
    shape: tuple[int, int, int],
    spacing: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    fov = np.asarray(shape) * spacing
    zz, yy, xx = (
        ((np.arange(n) - (n - 1) / 2) * d).reshape([-1 if i == axis else 1 for i in range(3)])
        for axis, (n, d) in enumerate(zip(shape, spacing, strict=True))
    )
    jitter = 1 + 0.03 * rng.standard_normal(2)
    body_x, body_y = 0.45 * fov[2] * jitter[0], 0.38 * fov[1] * jitter[1]
    body_r = (xx / body_x) ** 2 + (yy / body_y) ** 2
    body = np.broadcast_to(body_r <= 1.0, shape)
    tissue = np.broadcast_to(body_r <= 0.80, shape)
    lung_axes = np.array([0.42 * fov[0], 0.26 * fov[1], 0.16 * fov[2]])
    lung_centres = [np.array([0.0, -0.02 * fov[1], side * 0.21 * fov[2]]) for side in (-1, 1)]
    lungs = np.zeros(shape, dtype=bool)
    for c in lung_centres:
        lungs |= ((zz - c[0]) / lung_axes[0]) ** 2 + ((yy - c[1]) / lung_axes[1]) ** 2 + (
            (xx - c[2]) / lung_axes[2]
        ) ** 2 <= 1.0

    variation = _smooth_noise(rng, shape, 1.5 / spacing)
    hu = np.full(shape, _AIR_HU)
    hu[body] = _FAT_HU
    hu[tissue] = _TISSUE_HU + 12.0 * variation[tissue]
    hu[lungs] = _LUNG_HU + 25.0 * variation[lungs]

    centre_mm = lung_centres[(lesion.side + 1) // 2] + lesion.offset * lung_axes
    window, inside = _lesion_voxels(lesion, centre_mm, shape, spacing)
    texture = _smooth_noise(np.random.default_rng(lesion.texture_seed), inside.shape, lesion.texture_corr_mm / spacing)
    hu_window = hu[window]
    hu_window[inside] = lesion.mean_hu + lesion.texture_sd * _skewed(texture[inside], lesion.skew)
    mask = np.zeros(shape, dtype=np.uint8)
    mask[window][inside] = 1

    in_body = body | (mask == 1)
    hu[in_body] += _SITE_OFFSET_HU * site
    hu += rng.normal(0.0, _NOISE_SD_HU * (1 + _SITE_NOISE_STEP * site), shape)
    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16), mask


def _skewed(values: np.ndarray, g: float) -> np.ndarray:
    """Tukey's g transform of standard normal ``values``, re-standardised: skewness of sign g."""
    if abs(g) < 1e-6 or values.size < 2:
        return values
    out = np.expm1(g * values) / g
    sd = out.std()
    return (out - out.mean()) / sd if sd > 0 else out - out.mean()


def _lesion_voxels(
    lesion: _Lesion, centre_mm: np.ndarray, shape: tuple[int, int, int], spacing: np.ndarray
) -> tuple[tuple[slice, slice, slice], np.ndarray]:
    """The lesion's bounding window in the volume and its voxels inside that window."""
    half_mm = lesion.radius_mm * float(lesion.axes.max()) * (1 + lesion.lobulation) + spacing
    half = np.ceil(half_mm / spacing).astype(int)
    dims = np.asarray(shape)
    # Move the centre inwards rather than crop the lesion at the border: a cut lesion would
    # break the shape signal.
    centre = centre_mm / spacing + (dims - 1) / 2
    centre = np.clip(centre, half, np.maximum(half, dims - 1 - half))
    lo = np.maximum(np.floor(centre - half).astype(int), 0)
    hi = np.minimum(np.ceil(centre + half).astype(int) + 1, dims)
    window = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))

    grids = np.meshgrid(*(np.arange(a, b) for a, b in zip(lo, hi, strict=True)), indexing="ij")
    offsets_mm = np.stack([(g - c) * d for g, c, d in zip(grids, centre, spacing, strict=True)], axis=-1)
    q = (offsets_mm @ lesion.rotation) / (lesion.radius_mm * lesion.axes)
    r = np.linalg.norm(q, axis=-1)
    u = q / np.maximum(r, 1e-9)[..., None]
    g = np.cos(_LOBULATION_FREQ * (u @ lesion.waves.T) + lesion.phases).mean(axis=-1)
    inside = r <= 1 + lesion.lobulation * g
    return window, inside


def _write(array: np.ndarray, spacing_zyx: np.ndarray, path: pathlib.Path) -> None:
    image = sitk.GetImageFromArray(array)
    spacing_xyz = tuple(float(v) for v in spacing_zyx[::-1])
    image.SetSpacing(spacing_xyz)
    # Centre the volume on the scanner origin, as scanners roughly do.
    size_xyz = array.shape[::-1]
    image.SetOrigin(tuple(-(n - 1) / 2 * d for n, d in zip(size_xyz, spacing_xyz, strict=True)))
    sitk.WriteImage(image, str(path), useCompression=True)


# --- atlas -------------------------------------------------------------------------------


def _upsampled_noise(rng: np.random.Generator, shape: tuple[int, int, int], cell: int) -> np.ndarray:
    """Smooth noise in [-1, 1] with features about ``cell`` voxels wide, cheap at any size."""
    coarse = rng.uniform(-1.0, 1.0, [n // cell + 2 for n in shape]).astype(np.float32)
    # Linear upsampling by an integer factor, then cropped: exact shape, no full-size filter.
    fine = ndimage.zoom(coarse, cell, order=1, grid_mode=False)
    return fine[: shape[0], : shape[1], : shape[2]]


def _voronoi_labels(rng: np.random.Generator, brain: np.ndarray, spacing: np.ndarray, n_labels: int) -> np.ndarray:
    points = np.argwhere(brain) * spacing
    seeds = points[rng.choice(len(points), n_labels, replace=False)]
    # Lloyd's iterations on a sample: random seeds give cells of very uneven size, centroidal
    # ones give cells of nearly equal size (and convex, hence contiguous).
    sample = points[rng.choice(len(points), min(len(points), 60 * n_labels), replace=False)]
    for _ in range(10):
        nearest = cKDTree(seeds).query(sample)[1]
        counts = np.bincount(nearest, minlength=n_labels)
        sums = np.stack([np.bincount(nearest, sample[:, i], minlength=n_labels) for i in range(3)], axis=1)
        filled = counts > 0
        seeds[filled] = sums[filled] / counts[filled, None]
    # Number regions from inferior to superior, so neighbouring labels are roughly neighbours.
    seeds = seeds[np.argsort(seeds[:, 0], kind="stable")]
    labels = np.zeros(brain.shape, dtype=np.uint16)
    labels[brain] = cKDTree(seeds).query(points)[1].astype(np.uint16) + 1
    return labels
