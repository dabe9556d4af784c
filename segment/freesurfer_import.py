"""Import the SynthSeg networks FreeSurfer ships (``$FREESURFER_HOME/models``, FreeSurfer 7.3 and
later) into the bundles ``morpho synthseg`` looks for (``morpho models import-freesurfer``).

| file in ``$FREESURFER_HOME/models`` | bundle | roles |
| --- | --- | --- |
| ``synthseg_2.0.h5`` | ``freesurfer`` | ``synthseg`` |
| ``synthseg_robust_2.0.h5`` | ``freesurfer`` | ``s1``, ``d``, ``s2`` |
| ``synthseg_parc_2.0.h5`` | ``freesurfer`` and ``freesurfer-v1`` | ``parc`` |
| ``synthseg_qc_2.0.h5`` | ``freesurfer`` and ``freesurfer-v1`` | ``qc`` |
| ``synthseg_1.0.h5`` (when present) | ``freesurfer-v1`` | ``synthseg`` |

A bundle holds one ``synthseg`` network, so SynthSeg 1.0 gets a bundle of its own, next to the
first, named with ``-v1``. The model id is ``freesurfer-<version>`` (the version read from
``$FREESURFER_HOME/build-stamp.txt``), ``-v1`` for the second bundle.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from morphometry.errors import InputError
from morphometry.segment.bundle import Bundle
from morphometry.segment.keras_import import import_keras
from morphometry.segment.models import OFFICIAL_BUNDLE, user_models_dir

FILES = {  # file of $FREESURFER_HOME/models -> network kind (morphometry.segment.keras_import.KINDS)
    "synthseg_2.0.h5": "synthseg",
    "synthseg_robust_2.0.h5": "robust",
    "synthseg_parc_2.0.h5": "parc",
    "synthseg_qc_2.0.h5": "qc",
}
V1_FILE = "synthseg_1.0.h5"
SHARED_KINDS = ("parc", "qc")  # kinds the SynthSeg 1.0 bundle takes from the 2.0 files, as the original


@dataclass(frozen=True, eq=False)
class FreesurferImport:
    """The bundles written and the official files that were not found."""

    bundle: Bundle
    v1: Bundle | None  # the SynthSeg 1.0 bundle, when synthseg_1.0.h5 is present
    missing: tuple[str, ...]  # file names of FILES and V1_FILE absent from the models folder


def models_folder(freesurfer_home: str | os.PathLike | None = None) -> Path:
    """``<freesurfer_home>/models``, the home defaulting to ``$FREESURFER_HOME``."""
    home = freesurfer_home or os.environ.get("FREESURFER_HOME")
    if not home:
        raise InputError("FREESURFER_HOME is not set; give the FreeSurfer folder (7.3 or later)",
                         setting="freesurfer_home")
    folder = Path(home) / "models"
    if not folder.is_dir():
        raise InputError(f"{folder}: no such folder (FreeSurfer 7.3 and later keep the SynthSeg weights there)",
                         setting="freesurfer_home")
    return folder


def freesurfer_version(freesurfer_home: Path) -> str | None:
    """The version in ``build-stamp.txt`` (``7.4.1`` from ``freesurfer-linux-...-7.4.1-20230614-...``)."""
    stamp = Path(freesurfer_home) / "build-stamp.txt"
    if not stamp.is_file():
        return None
    found = re.search(r"\d+\.\d+(\.\d+)?", stamp.read_text())
    return found.group(0) if found else None


def v1_folder(out: Path) -> Path:
    """The SynthSeg 1.0 bundle next to ``out``: ``<out>-v1``."""
    return out.with_name(out.name + "-v1")


def import_freesurfer(freesurfer_home: str | os.PathLike | None = None, out: str | os.PathLike | None = None,
                      model_id: str | None = None) -> FreesurferImport:
    """Import the official files of ``<freesurfer_home>/models`` (module docstring) into ``out``
    (default: ``freesurfer`` in :func:`~morphometry.segment.models.user_models_dir`) and, with
    ``synthseg_1.0.h5``, ``<out>-v1``. ``model_id`` defaults to ``freesurfer-<version>``.
    Refuses to overwrite a bundle."""
    folder = models_folder(freesurfer_home)
    out = Path(out) if out is not None else user_models_dir() / OFFICIAL_BUNDLE
    present = {name: folder / name for name in (*FILES, V1_FILE) if (folder / name).is_file()}
    missing = tuple(name for name in (*FILES, V1_FILE) if name not in present)
    main = [name for name in FILES if name in present]
    if not main:
        raise InputError(f"{folder}: none of {', '.join(FILES)} found (FreeSurfer 7.3 and later ship them)",
                         setting="freesurfer_home")
    targets = [out] + ([v1_folder(out)] if V1_FILE in present else [])
    for target in targets:
        if (target / "bundle.json").exists():
            raise InputError(f"{target}: already holds a model bundle; remove it or choose another output folder",
                             setting="out")
    version = freesurfer_version(folder.parent)
    model_id = model_id or "freesurfer" + (f"-{version}" if version else "")
    bundle = import_keras([present[n] for n in main], out, [FILES[n] for n in main], model_id)
    v1 = None
    if V1_FILE in present:
        shared = [n for n in FILES if n in present and FILES[n] in SHARED_KINDS]
        v1 = import_keras([present[V1_FILE], *(present[n] for n in shared)], targets[1],
                          ["synthseg", *(FILES[n] for n in shared)], f"{model_id}-v1")
    return FreesurferImport(bundle, v1, missing)
