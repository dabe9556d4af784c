"""Silver standards: propagate a session's reference labels to its other scans by rigid registration.

For each scan of a session, the session's reference image (e.g. a 1 mm T1 with a FreeSurfer or
manual segmentation) is registered rigidly to the scan with SimpleITK: Mattes mutual information,
multi-resolution (shrink factors and Gaussian smoothing in mm), centred initialisation, regular-step
gradient descent on a 3-D Euler transform. The labels are then resampled onto the scan's grid
with nearest neighbour. Images are read with nibabel and handed to SimpleITK in its LPS world
space; the transform maps scan (fixed) points to reference (moving) points.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path

import numpy as np
import pandas as pd

from morphometry.atomic import atomic_write
from morphometry.cluster import cluster_map, cluster_spec
from morphometry.errors import DataError, InputError
from morphometry.io import strip_image_suffix
from morphometry.progress import Progress
from morphometry.tables import read_text_csv

INITIALISATIONS = ("moments", "geometry", "world")
_LPS = np.diag([-1.0, -1.0, 1.0])


@dataclass(frozen=True)
class RegistrationConfig:
    """Settings of the rigid registration.

    ``init``: ``moments`` (align centres of mass), ``geometry`` (align image centres) or ``world``
    (keep the scanner coordinates; rotate about the scan's centre).
    """

    init: str = "moments"
    histogram_bins: int = 50
    sampling_fraction: float = 0.25  # of the fixed image's voxels, drawn at random per level
    shrink_factors: tuple[int, ...] = (4, 2, 1)
    smoothing_sigmas_mm: tuple[float, ...] = (4.0, 2.0, 1.0)
    learning_rate: float = 2.0  # first step of each level (optimiser units: mm of physical shift)
    min_step: float = 1e-4  # stop a level when the step falls below this
    iterations: int = 300  # at most, per level
    threads: int = 0  # SimpleITK threads; 0 leaves its default

    def __post_init__(self):
        if self.init not in INITIALISATIONS:
            raise InputError(f"must be one of {', '.join(INITIALISATIONS)}, not {self.init!r}", setting="init")
        if len(self.shrink_factors) != len(self.smoothing_sigmas_mm):
            raise InputError("shrink factors and smoothing sigmas need one value per level")
        if not 0.0 < self.sampling_fraction <= 1.0:
            raise InputError(f"fraction must lie in (0, 1] (got {self.sampling_fraction})", setting="sampling")


def to_sitk(data: np.ndarray, affine: np.ndarray, pixel_type=None):
    """A SimpleITK image of a voxel array in nibabel order with its RAS affine."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(data, (2, 1, 0))))
    if pixel_type is not None:
        image = sitk.Cast(image, pixel_type)
    linear = np.asarray(affine, dtype=np.float64)[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetDirection(tuple(float(v) for v in (_LPS @ linear / spacing).ravel()))
    image.SetOrigin(tuple(float(v) for v in _LPS @ np.asarray(affine, dtype=np.float64)[:3, 3]))
    return image


def from_sitk(image) -> np.ndarray:
    """Voxel array of a SimpleITK image in nibabel order."""
    import SimpleITK as sitk

    return np.transpose(sitk.GetArrayFromImage(image), (2, 1, 0))


@dataclass(frozen=True)
class Registration:
    """Result of one rigid registration: scan world -> reference world."""

    transform: object  # SimpleITK Euler3DTransform in LPS mm
    final_metric: float
    iterations: int
    stop_condition: str
    seed: int

    def matrix_ras(self) -> np.ndarray:
        """4x4 matrix mapping scan RAS world points (mm) to reference RAS world points (mm)."""
        rotation = np.asarray(self.transform.GetMatrix()).reshape(3, 3)
        centre = np.asarray(self.transform.GetCenter())
        translation = np.asarray(self.transform.GetTranslation())
        lps = np.eye(4)
        lps[:3, :3] = rotation
        lps[:3, 3] = translation + centre - rotation @ centre
        flip = np.diag([-1.0, -1.0, 1.0, 1.0])
        return flip @ lps @ flip

    def rotation_deg(self) -> float:
        """Total rotation angle, degrees."""
        rotation = self.matrix_ras()[:3, :3]
        return float(np.degrees(np.arccos(np.clip((np.trace(rotation) - 1.0) / 2.0, -1.0, 1.0))))

    def report(self) -> dict:
        """Parameters for the registration table (Euler angles in degrees about the LPS axes,
        translation in LPS mm about ``centre``, and the RAS matrix row by row)."""
        angles = np.degrees(self.transform.GetParameters()[:3])
        translation = self.transform.GetParameters()[3:]
        centre = self.transform.GetCenter()
        row = {f"angle_{a}_deg": float(v) for a, v in zip("xyz", angles)}
        row.update({f"translation_{a}_mm": float(v) for a, v in zip("xyz", translation)})
        row.update({f"centre_{a}_mm": float(v) for a, v in zip("xyz", centre)})
        row.update({"rotation_deg": self.rotation_deg(), "final_metric": self.final_metric,
                    "iterations": self.iterations, "stop_condition": self.stop_condition, "seed": self.seed,
                    "matrix_ras": " ".join(f"{v:.6g}" for v in self.matrix_ras()[:3].ravel())})
        return row


def _initial_transform(fixed, moving, init: str):
    import SimpleITK as sitk

    if init == "world":
        size = np.asarray(fixed.GetSize(), dtype=np.float64)
        centre = fixed.TransformContinuousIndexToPhysicalPoint(tuple((size - 1.0) / 2.0))
        transform = sitk.Euler3DTransform()
        transform.SetCenter(centre)
        return transform
    mode = (sitk.CenteredTransformInitializerFilter.MOMENTS if init == "moments"
            else sitk.CenteredTransformInitializerFilter.GEOMETRY)
    return sitk.CenteredTransformInitializer(fixed, moving, sitk.Euler3DTransform(), mode)


def register_rigid(fixed_data: np.ndarray, fixed_affine: np.ndarray, moving_data: np.ndarray,
                   moving_affine: np.ndarray, config: RegistrationConfig, rng: np.random.Generator
                   ) -> Registration:
    """Rigid registration of a moving image (the session reference) to a fixed image (a scan).

    The random metric samples are drawn with a seed taken from ``rng`` (recorded in the result).
    """
    import SimpleITK as sitk

    if config.threads:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(config.threads)
    fixed = to_sitk(_unit_range(fixed_data), fixed_affine, sitk.sitkFloat32)
    moving = to_sitk(_unit_range(moving_data), moving_affine, sitk.sitkFloat32)
    seed = int(rng.integers(1, 2**31 - 1))
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=config.histogram_bins)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(config.sampling_fraction, seed)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=config.learning_rate, minStep=config.min_step,
        numberOfIterations=config.iterations, relaxationFactor=0.5, gradientMagnitudeTolerance=1e-8)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(list(config.shrink_factors))
    method.SetSmoothingSigmasPerLevel(list(config.smoothing_sigmas_mm))
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    method.SetInitialTransform(_initial_transform(fixed, moving, config.init), inPlace=False)
    try:
        transform = method.Execute(fixed, moving)
    except RuntimeError as exc:
        raise DataError(f"registration failed: {str(exc).strip().splitlines()[-1]}") from None
    euler = sitk.Euler3DTransform(sitk.CompositeTransform(transform).GetNthTransform(0))
    return Registration(euler, float(method.GetMetricValue()), int(method.GetOptimizerIteration()),
                        method.GetOptimizerStopConditionDescription(), seed)


def _unit_range(data: np.ndarray) -> np.ndarray:
    """Intensities clipped to the 0.5-99.5th percentiles and scaled to [0, 1] (float32)."""
    lo, hi = np.percentile(data, [0.5, 99.5])
    if hi <= lo:
        raise DataError("image has no intensity range to register")
    return ((np.clip(data, lo, hi) - lo) / (hi - lo)).astype(np.float32)


def propagate_labels(labels: np.ndarray, labels_affine: np.ndarray, registration: Registration,
                     shape: tuple[int, int, int], affine: np.ndarray) -> np.ndarray:
    """Reference labels resampled onto a scan's grid (shape, affine) through the registration,
    with nearest neighbour; 0 outside the reference's field of view (int32)."""
    import SimpleITK as sitk

    moving = to_sitk(labels.astype(np.int32), labels_affine)
    grid = to_sitk(np.zeros(shape, dtype=np.uint8), affine)
    moved = sitk.Resample(moving, grid, registration.transform, sitk.sitkNearestNeighbor, 0, sitk.sitkInt32)
    return from_sitk(moved).astype(np.int32)


# ---------------------------------------------------------------- sessions


@dataclass(frozen=True)
class Session:
    """A session: its reference image and labels, and the scans to propagate them to."""

    session_id: str
    reference_scan_id: str
    reference_image: Path
    reference_labels: Path
    scans: tuple[tuple[str, Path], ...]  # (scan_id, path)


SESSION_COLUMNS = ("session_id", "scan_id", "path", "labels")


def read_sessions(source: str | Path | pd.DataFrame) -> list[Session]:
    """Sessions from a CSV or DataFrame with columns session_id, scan_id, path, labels.

    ``labels`` is filled on the reference row of each session (the label map of that scan) and
    empty elsewhere; relative paths are taken from the CSV's folder (the working folder for a
    DataFrame).
    """
    if isinstance(source, pd.DataFrame):
        name, folder = "sessions table", Path()
        df = source.fillna("").astype(str)
    else:
        name, folder = str(source), Path(source).parent
        df = read_text_csv(Path(source), "session manifest")
    missing = [c for c in SESSION_COLUMNS if c not in df.columns]
    if missing:
        raise InputError(f"{name}: session manifest lacks column(s) {', '.join(missing)} "
                         f"(needs {', '.join(SESSION_COLUMNS)})")
    if df["scan_id"].duplicated().any():
        raise InputError(f"{name}: scan_id {df.loc[df['scan_id'].duplicated(), 'scan_id'].iloc[0]} appears twice")

    def resolve(p: str) -> Path:
        return Path(p) if Path(p).is_absolute() else folder / p

    sessions = []
    for session_id, rows in df.groupby("session_id", sort=False):
        refs = rows[rows["labels"] != ""]
        if len(refs) != 1:
            raise InputError(f"{name}: session {session_id} has {len(refs)} rows with labels; exactly one "
                             "(the reference scan) is required")
        ref = refs.iloc[0]
        others = tuple((r.scan_id, resolve(r.path)) for r in rows.itertuples() if r.labels == "")
        sessions.append(Session(str(session_id), ref["scan_id"], resolve(ref["path"]), resolve(ref["labels"]),
                                others))
    return sessions


def single_session(scans, reference_image: str | Path, reference_labels: str | Path,
                   session_id: str = "session") -> Session:
    """One session from its scans (paths named ``<scan_id>``, or a dict ``{scan_id: path}``), its
    reference image (the name gives its scan_id) and the reference's label map."""
    if isinstance(scans, (str, Path)):
        scans = [scans]
    items = ([(str(k), Path(v)) for k, v in scans.items()] if isinstance(scans, dict)
             else [(strip_image_suffix(Path(s).name), Path(s)) for s in scans])
    ids = [scan_id for scan_id, _ in items]
    if len(set(ids)) != len(ids):
        raise InputError(f"two scans share the scan_id {next(i for i in ids if ids.count(i) > 1)}", setting="scans")
    reference = Path(reference_image)
    return Session(session_id, strip_image_suffix(reference.name), reference, Path(reference_labels), tuple(items))


def propagate_scan(item: tuple[Session, str, Path, np.random.Generator], out_dir: Path,
                   config: RegistrationConfig) -> tuple[dict | None, dict | None]:
    """Register a session's reference to one of its scans and write the propagated labels.

    ``item``: (session, scan_id, scan path, the generator the registration draws its seed from).
    Writes ``out_dir/silver/<scan_id>.nii.gz`` (int32 labels on the scan's grid) and
    ``out_dir/transforms/<scan_id>.tfm``; returns (report row, None) or (None, failure row).
    """
    import nibabel as nib
    import SimpleITK as sitk

    from morphometry.io import load_scan

    session, scan_id, scan_path, rng = item

    def failed(error: str) -> tuple[None, dict]:
        return None, {"scan_id": scan_id, "session_id": session.session_id, "path": str(scan_path), "error": error}

    try:
        reference, labels = _reference(session.reference_image, session.reference_labels)
    except (InputError, DataError) as exc:
        return failed(str(exc))
    try:
        scan = load_scan(scan_path)
        reg = register_rigid(scan.data, scan.affine, reference.data, reference.affine, config, rng)
        silver_labels = propagate_labels(labels.data, labels.affine, reg, scan.data.shape[:3], scan.affine)
    except (InputError, DataError) as exc:
        return failed(str(exc) if str(scan_path) in str(exc) else f"{scan_path}: {exc}")
    silver_path = out_dir / "silver" / f"{scan_id}.nii.gz"
    transform_path = out_dir / "transforms" / f"{scan_id}.tfm"
    image = nib.Nifti1Image(silver_labels, scan.affine)
    image.set_data_dtype(np.int32)
    atomic_write(silver_path, lambda tmp: nib.save(image, str(tmp)), suffix=".nii.gz")
    atomic_write(transform_path, lambda tmp: sitk.WriteTransform(reg.transform, str(tmp)), suffix=".tfm")
    return {"scan_id": scan_id, "session_id": session.session_id, "reference_scan_id": session.reference_scan_id,
            "silver_path": str(silver_path), "transform_path": str(transform_path), **reg.report()}, None


def _reference(image: Path, labels: Path):
    """A session's reference image and labels, read once for the scans of the session in a row
    (read again when a file changed)."""
    return _read_reference(image, labels, _stamp(image), _stamp(labels))


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        stat = Path(path).stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


@lru_cache(maxsize=2)
def _read_reference(image: Path, labels: Path, image_stamp, labels_stamp):
    from morphometry.analysis.label_maps import load_labels
    from morphometry.io import load_scan

    return load_scan(image), load_labels(labels)


# ---------------------------------------------------------------- the Python API


@dataclass(frozen=True, repr=False)
class SilverResult:
    """What :func:`silver` wrote to ``out_dir``.

    ``registrations``: one row per propagated scan (``registration.csv``: session, reference,
    paths, Euler angles in degrees, translation in mm, final metric, seed, RAS matrix);
    ``manifest``: scan_id, path of each silver standard (``silver.csv``, a reference manifest for
    :func:`morphometry.analysis.evaluation.evaluate`); ``failures``: scan_id, session_id, path,
    error (``failures.csv``).
    """

    out_dir: Path
    registrations: pd.DataFrame
    manifest: pd.DataFrame
    failures: pd.DataFrame
    n_sessions: int

    @property
    def ok(self) -> bool:
        """True when labels were propagated to every scan."""
        return self.failures.empty

    def __repr__(self) -> str:
        return (f"SilverResult({len(self.registrations)} scan(s) of {self.n_sessions} session(s) -> {self.out_dir}; "
                f"{len(self.failures)} failure(s))")


def silver(out_dir: str | Path, *, sessions=None, scans=None, reference_image: str | Path | None = None,
           reference_labels: str | Path | None = None, init: str = "moments", sampling: float = 0.25,
           threads: int = 0, seed: int = 0, progress: bool = True, cluster=None,
           cluster_config: str | Path | None = None) -> SilverResult:
    """Silver standards: propagate each session's reference labels to its other scans.

    Give ``sessions`` (a CSV or DataFrame: session_id, scan_id, path, labels on the reference row;
    see :func:`read_sessions`) or one session as ``scans`` (paths named ``<scan_id>``, or a dict
    ``{scan_id: path}``) with ``reference_image`` and ``reference_labels``. The reference image
    is registered rigidly to every scan (``init``: ``moments``, ``geometry`` or ``world``;
    ``sampling``: fraction of the scan's voxels sampled by the metric per level; ``threads``:
    SimpleITK threads, 0 for all cores; ``seed``: seed of the metric sampling) and its labels
    resampled onto the scan with nearest neighbour. Writes ``silver/<scan_id>.nii.gz``,
    ``transforms/<scan_id>.tfm``, ``registration.csv`` and ``silver.csv`` (when a scan succeeded),
    ``failures.csv`` (when one failed) into ``out_dir``. A scan that fails is logged and the rest
    finish. ``cluster`` (``"local"``, ``"local:N"``, ``"slurm"``, ``"pbs"``, ``"tcp://HOST:PORT"`` or a
    :class:`~morphometry.cluster.ClusterSpec`) and ``cluster_config`` (YAML settings): one task
    per scan on a Dask cluster (``out_dir`` shared with the workers); the same results.
    """
    config = RegistrationConfig(init=init, sampling_fraction=sampling, threads=threads)
    spec = cluster_spec(cluster, cluster_config)
    chosen = _sessions(sessions, scans, reference_image, reference_labels)
    out = Path(out_dir).resolve()
    rng = np.random.default_rng(seed)
    items = []
    for session in chosen:
        for scan_id, scan_path in session.scans:
            items.append((session, scan_id, scan_path, copy.deepcopy(rng)))
            rng.integers(1, 2**31 - 1)  # the draw of this scan's registration: the next scan draws the next seed
    results: list[tuple[dict | None, dict | None]] = [(None, None)] * len(items)
    task = partial(propagate_scan, out_dir=out, config=config)
    with Progress(len(items), "silver", unit="scan", enabled=progress) as bar:
        def take(index: int, result: tuple[dict | None, dict | None]) -> None:
            results[index] = result
            if result[1] is not None:
                bar.write(f"failed: {result[1]['scan_id']}: {result[1]['error']}")
            bar.update()

        if spec is None:
            for index, item in enumerate(items):
                take(index, task(item))
        else:
            cluster_map(spec, task, items, take, name="silver", on_failure=lambda index, message: take(
                index, (None, {"scan_id": items[index][1], "session_id": items[index][0].session_id,
                               "path": str(items[index][2]), "error": f"{items[index][2]}: {message}"})))
    rows = [row for row, _ in results if row is not None]
    failures = [failure for _, failure in results if failure is not None]
    registrations = pd.DataFrame(rows)
    manifest = (registrations[["scan_id", "silver_path"]].rename(columns={"silver_path": "path"}) if rows
                else pd.DataFrame(columns=["scan_id", "path"]))
    if rows:
        atomic_write(out / "registration.csv", lambda tmp: registrations.to_csv(tmp, index=False))
        atomic_write(out / "silver.csv", lambda tmp: manifest.to_csv(tmp, index=False))
    failure_table = pd.DataFrame(failures, columns=["scan_id", "session_id", "path", "error"])
    if failures:
        atomic_write(out / "failures.csv", lambda tmp: failure_table.to_csv(tmp, index=False))
    return SilverResult(out, registrations, manifest, failure_table, len(chosen))


def _sessions(sessions, scans, reference_image, reference_labels) -> list[Session]:
    if sessions is not None:
        if scans or reference_image or reference_labels:
            raise InputError("give a sessions manifest or one session's scans with its reference image and "
                             "labels, not both", setting="sessions")
        return read_sessions(sessions)
    if not scans:
        raise InputError("give a sessions manifest, or scans with a reference image and its labels",
                         setting="sessions")
    for value, setting in ((reference_image, "reference_image"), (reference_labels, "reference_labels")):
        if not value:
            raise InputError("needed with scans (one session)", setting=setting)
    return [single_session(scans, reference_image, reference_labels)]
