"""Where ``mri_synthseg`` reads and writes: pairing its ``--i`` with ``--o``, ``--post``,
``--resample``, ``--vol`` and ``--qc`` (the original's ``SynthSeg/predict_synthseg.py``, function
``prepare_output_files``).

``--i`` is one image, a folder or a ``.txt`` file listing images, one path a line:

| ``--i`` | ``--o`` / ``--post`` / ``--resample`` | ``--vol`` / ``--qc`` |
| --- | --- | --- |
| image | an image path, or a folder: ``<name>_synthseg<ext>`` in it | one CSV: header, row |
| folder | folders: ``<name>_synthseg<ext>`` (``_posteriors``, ``_resampled``) | one CSV, sorted rows |
| ``.txt`` | ``.txt`` lists, one output path per input line | ``.txt`` lists of one CSV per input |

A folder is read as the original does: the files directly in it (no subfolders, no hidden files)
ending in ``nii.gz``, ``nii`` or ``.mgz``, sorted by path. A CSV path without ``.csv`` gets it
appended. ``<ext>`` is the input's (``.nii.gz``, ``.nii``, ``.mgz``, ``.mgh``): the suffix goes
before it. Lines of a ``.txt`` file are taken as written (line ends removed, blank lines skipped).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from morphometry.errors import InputError
from morphometry.io import IMAGE_SUFFIXES

FOLDER_PATTERNS = ("nii.gz", "nii", ".mgz")  # name endings the original lists in an input folder
SUFFIXES = {"segmentation": "synthseg", "posteriors": "posteriors", "resampled": "resampled"}


@dataclass(frozen=True)
class SynthsegJob:
    """One input image and the paths of its outputs (None: not asked for)."""

    image: Path
    segmentation: Path
    posteriors: Path | None = None
    resampled: Path | None = None  # written only when the image is resampled to 1 mm
    volumes_csv: Path | None = None  # this subject's own CSV (``.txt`` inputs)
    qc_csv: Path | None = None  # this subject's own QC CSV (``.txt`` inputs)

    @property
    def subject(self) -> str:
        """The CSV's subject column: the file name with ``.nii.gz`` removed (other extensions stay,
        as in the original)."""
        return subject_name(self.image)


@dataclass(frozen=True)
class SynthsegPlan:
    """Every job of a run, in the original's order, and the CSVs shared by all subjects."""

    source: Path  # --i: the image, folder or .txt list
    jobs: tuple[SynthsegJob, ...]
    volumes_csv: Path | None = None  # one volumes CSV for all subjects (image or folder input)
    qc_csv: Path | None = None  # one QC CSV for all subjects (image or folder input)
    anchor: Path = Path(".")  # the folder that keeps the run's state: --o, or the folder of --o

    @property
    def wants_posteriors(self) -> bool:
        return any(job.posteriors is not None for job in self.jobs)

    @property
    def wants_resampled(self) -> bool:
        return any(job.resampled is not None for job in self.jobs)


def subject_name(image: Path) -> str:
    """``t1.nii.gz`` -> ``t1``; ``t1.nii`` and ``t1.mgz`` keep their extension (the original's rule)."""
    return Path(image).name.replace(".nii.gz", "")


def image_suffix(path: str | Path) -> str | None:
    """The image extension a path ends with (``.nii.gz``, ``.nii``, ``.mgz``, ``.mgh``), else None."""
    name = Path(path).name.lower()
    return next((s for s in IMAGE_SUFFIXES if name.endswith(s)), None)


def output_name(image: Path, suffix: str) -> str:
    """``scan.nii.gz`` -> ``scan_<suffix>.nii.gz``; the same before ``.nii``, ``.mgz``, ``.mgh``."""
    name = Path(image).name
    ext = image_suffix(name)
    if ext is None:
        raise InputError(f"{image}: not an image file (expected {', '.join(IMAGE_SUFFIXES)})", setting="inputs")
    return f"{name[: -len(ext)]}_{suffix}{name[-len(ext):]}"


def list_folder(folder: Path) -> list[Path]:
    """The images of a folder as the original lists them: not recursive, sorted by path."""
    found = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
             and p.name.lower().endswith(FOLDER_PATTERNS)]
    return sorted(found, key=str)


def read_list(path: Path, setting: str) -> list[Path]:
    """The paths of a ``.txt`` file, one a line (blank lines skipped)."""
    if not path.is_file():
        raise InputError(f"{path}: no such text file", setting=setting)
    lines = [line.rstrip("\r\n") for line in path.read_text().splitlines()]
    return [Path(line) for line in lines if line.strip()]


def plan_outputs(inputs: str | Path, segmentations: str | Path, posteriors: str | Path | None = None,
                 resampled: str | Path | None = None, volumes: str | Path | None = None,
                 qc: str | Path | None = None) -> SynthsegPlan:
    """Pair the inputs with their outputs as ``mri_synthseg`` does (module docstring).

    Settings (and flags): ``inputs`` (--i), ``segmentations`` (--o), ``posteriors`` (--post),
    ``resampled`` (--resample), ``volumes`` (--vol), ``qc`` (--qc). A pairing the original refuses,
    or one it would get wrong (different numbers of lines), raises an InputError naming the flag.
    """
    src = Path(inputs)
    outputs = {"segmentations": Path(segmentations), "posteriors": _path(posteriors), "resampled": _path(resampled)}
    tables = {"volumes": _path(volumes), "qc": _path(qc)}
    if src.name.lower().endswith(".txt"):
        return _plan_list(src, outputs, tables)
    if src.is_dir():
        return _plan_folder(src, outputs, tables)
    if image_suffix(src) is None:
        what = "no such file or folder" if not src.exists() else "not an image, a folder or a .txt list of images"
        raise InputError(f"{src}: {what} (images: {', '.join(IMAGE_SUFFIXES)})", setting="inputs")
    if not src.is_file():
        raise InputError(f"{src}: no such file", setting="inputs")
    return _plan_image(src, outputs, tables)


def _path(value) -> Path | None:
    return None if value is None else Path(value)


def _csv(path: Path | None, setting: str) -> Path | None:
    if path is None:
        return None
    if path.name.lower().endswith(".txt"):
        raise InputError(f"{path}: a .txt list of CSV files goes with a .txt list of inputs only", setting=setting)
    return path if path.name.lower().endswith(".csv") else path.with_name(path.name + ".csv")


def _no_lists(outputs: dict) -> None:
    for setting, path in outputs.items():
        if path is not None and path.name.lower().endswith(".txt"):
            raise InputError(f"{path}: a .txt list of outputs goes with a .txt list of inputs only "
                             f"(--i is not a .txt file)", setting=setting)


def _plan_image(image: Path, outputs: dict, tables: dict) -> SynthsegPlan:
    _no_lists(outputs)
    paths = {}
    for setting, path in outputs.items():
        if path is None:
            paths[setting] = None
        elif image_suffix(path) is not None:
            paths[setting] = path
        else:  # a folder: the original's name inside it
            paths[setting] = path / output_name(image, SUFFIXES[_kind(setting)])
    seg = paths["segmentations"]
    job = SynthsegJob(image, seg, paths["posteriors"], paths["resampled"])
    return SynthsegPlan(image, (job,), _csv(tables["volumes"], "volumes"), _csv(tables["qc"], "qc"), seg.parent)


def _plan_folder(folder: Path, outputs: dict, tables: dict) -> SynthsegPlan:
    _no_lists(outputs)
    images = list_folder(folder)
    if not images:
        raise InputError(f"{folder}: no .nii.gz, .nii or .mgz images in this folder", setting="inputs")
    for setting, path in outputs.items():
        if path is not None and image_suffix(path) is not None:
            raise InputError(f"{path}: --i is a folder, so this must be a folder too (it has an image "
                             "extension)", setting=setting)
    jobs = []
    for image in images:
        named = {s: None if p is None else p / output_name(image, SUFFIXES[_kind(s)]) for s, p in outputs.items()}
        jobs.append(SynthsegJob(image, named["segmentations"], named["posteriors"], named["resampled"]))
    return SynthsegPlan(folder, tuple(jobs), _csv(tables["volumes"], "volumes"), _csv(tables["qc"], "qc"),
                        outputs["segmentations"])


def _plan_list(listing: Path, outputs: dict, tables: dict) -> SynthsegPlan:
    images = read_list(listing, "inputs")
    if not images:
        raise InputError(f"{listing}: lists no images", setting="inputs")
    columns = {}
    for setting, path in {**outputs, **tables}.items():
        if path is None:
            continue
        if not path.name.lower().endswith(".txt"):
            raise InputError(f"{path}: --i is a .txt list, so this must be a .txt list too (one path per "
                             "input line)", setting=setting)
        listed = read_list(path, setting)
        if len(listed) != len(images):
            raise InputError(f"{path} lists {len(listed)} path(s) but {listing} lists {len(images)} input(s); "
                             "give one line per input", setting=setting)
        columns[setting] = listed
    for i, image in enumerate(images):
        if image_suffix(image) is None:
            raise InputError(f"{listing}, line {i + 1}: {image} is not an image file "
                             f"({', '.join(IMAGE_SUFFIXES)})", setting="inputs")
        for setting in outputs:
            if setting in columns and image_suffix(columns[setting][i]) is None:
                raise InputError(f"{outputs[setting]}, line {i + 1}: {columns[setting][i]} is not an image file "
                                 f"name ({', '.join(IMAGE_SUFFIXES)})", setting=setting)
    get = lambda setting, i: columns[setting][i] if setting in columns else None  # noqa: E731
    jobs = tuple(SynthsegJob(image, get("segmentations", i), get("posteriors", i), get("resampled", i),
                             get("volumes", i), get("qc", i)) for i, image in enumerate(images))
    return SynthsegPlan(listing, jobs, anchor=outputs["segmentations"].parent)


def _kind(setting: str) -> str:
    return "segmentation" if setting == "segmentations" else setting
