"""Where model bundles live: the ones shipped with the package (``starter/``: the default of
``morpho segment``), the folders of ``$MORPHO_MODELS`` and the user's models folder, which holds
the official networks imported by ``morpho models import-freesurfer`` (``freesurfer/``, and
``freesurfer-v1/`` for SynthSeg 1.0), where ``morpho synthseg`` finds them."""

import os
from pathlib import Path

STARTER_BUNDLE = Path(__file__).parent / "starter"
OFFICIAL_BUNDLE = "freesurfer"  # folder name of the imported official networks (SynthSeg 2.0, robust, parc, QC)
OFFICIAL_V1_BUNDLE = "freesurfer-v1"  # the same for SynthSeg 1.0 (one synthseg network per bundle)


def data_models_dir() -> Path:
    """The user's models folder: ``$XDG_DATA_HOME/morphometry/models`` (``~/.local/share/morphometry/models``)."""
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "morphometry" / "models"


def user_models_dir() -> Path:
    """Where imported bundles go by default: the first folder of ``$MORPHO_MODELS`` if set, else
    :func:`data_models_dir`."""
    extra = _extra_dirs()
    return extra[0] if extra else data_models_dir()


def bundle_dirs() -> list[Path]:
    """Where bundles are listed from: the shipped ones, ``$MORPHO_MODELS`` (an os.pathsep list)
    and the user's models folder."""
    folders = [STARTER_BUNDLE.parent, *_extra_dirs()]
    return folders if data_models_dir() in folders else [*folders, data_models_dir()]


def find_official(v1: bool = False) -> Path | None:
    """The first ``freesurfer/`` (``freesurfer-v1/`` with ``v1``) bundle folder of :func:`bundle_dirs`."""
    name = OFFICIAL_V1_BUNDLE if v1 else OFFICIAL_BUNDLE
    for folder in bundle_dirs():
        if (folder / name / "bundle.json").is_file():
            return folder / name
    return None


def _extra_dirs() -> list[Path]:
    return [Path(p) for p in os.environ.get("MORPHO_MODELS", "").split(os.pathsep) if p]
