"""Model bundles shipped with the package (``starter/``: the default of ``morpho segment``)."""

import os
from pathlib import Path

STARTER_BUNDLE = Path(__file__).parent / "starter"


def bundle_dirs() -> list[Path]:
    """Where bundles are listed from: the shipped ones and ``$MORPHO_MODELS`` (an os.pathsep list)."""
    extra = [Path(p) for p in os.environ.get("MORPHO_MODELS", "").split(os.pathsep) if p]
    return [STARTER_BUNDLE.parent, *extra]
