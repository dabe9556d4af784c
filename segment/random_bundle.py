"""Bundles of seeded random networks with the official interfaces (for tests and benchmarks)."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from morphometry.labels import PARCELLATION_LABELS, SYNTHSEG_2
from morphometry.segment.bundle import TISSUE_LABELS, Bundle, write_bundle
from morphometry.segment.networks import OFFICIAL_SPECS, random_weights, unet_model
from morphometry.segment.qcnet import QCSpec, qc_model

SEGMENTATION_ROLES = ("s1", "d", "s2", "synthseg", "d_all")
LABELS = {
    "s1": TISSUE_LABELS,
    "d": TISSUE_LABELS,
    "parc": [0] + [p.value for p in PARCELLATION_LABELS],
    "qc": list(range(9)),
}


def random_bundle(root: Path, features: int = 4, seed: int = 0, levels: int = 5,
                  roles: tuple[str, ...] = SEGMENTATION_ROLES, resolution_mm: float = 1.0,
                  min_size: int = 128) -> Bundle:
    """Write a bundle of random networks; ``features`` scales every width (official: 24, D 16)."""
    rng = np.random.default_rng(seed)
    specs = dict(OFFICIAL_SPECS)
    specs["d_all"] = replace(OFFICIAL_SPECS["d"], in_channels=33, n_labels=33)
    models = {}
    for role in roles:
        doc = f"random {role} network, seed {seed}"
        if role == "qc":
            qspec = QCSpec(features=features)
            models[role] = (qc_model(qspec, random_weights(qspec, rng, relu=True), doc=doc), LABELS[role], asdict(qspec))
            continue
        width = features if role not in ("d", "d_all") else max(2, features * 2 // 3)
        spec = replace(specs[role], features=width, levels=levels)
        labels = LABELS.get(role, SYNTHSEG_2.values.tolist())
        models[role] = (unet_model(spec, random_weights(spec, rng), doc), labels, asdict(spec))
    provenance = {"source": "random", "seed": seed, "features": features}
    return write_bundle(root, f"random-f{features}-s{seed}", models, provenance, resolution_mm,
                        licence="none (random weights)", description="seeded random networks for tests",
                        min_size=min_size)
