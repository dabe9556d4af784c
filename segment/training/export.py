"""Trained runs -> ONNX networks and model bundles.

Each run's last checkpoint becomes the ONNX graph of ``morphometry.segment.networks``
(:func:`morphometry.segment.training.runs.onnx_network`: the PyTorch weights in the Keras layout,
the graph built by ``unet_model``), so a trained network is the same graph as an imported one.
``bundle.json`` provenance carries the model card: per network the training configuration, the
steps, wall time and hardware, the training and held-out maps and the last validation Dice, plus
the evaluation of :mod:`morphometry.segment.training.evaluate` when given.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import torch

from morphometry.errors import InputError
from morphometry.labels import SYNTHSEG_2
from morphometry.segment.bundle import TISSUE_LABELS, Bundle, write_bundle
from morphometry.segment.training.runs import load_run, onnx_network

OFFICIAL_MIN_SIZE_MM = 128  # the official networks' minimum input, 128 voxels of 1 mm
SIZE_MULTIPLE = 32  # the runtime pads every axis to a multiple of 32 voxels


def min_size_for(resolution_mm: float) -> int:
    """Smallest padded input per axis: the official 128 mm field, in voxels, rounded up to 32."""
    voxels = OFFICIAL_MIN_SIZE_MM / resolution_mm
    return max(SIZE_MULTIPLE, math.ceil(voxels / SIZE_MULTIPLE) * SIZE_MULTIPLE)


def export_bundle(run_dirs: list[str | Path], out: str | Path, model_id: str,
                  evaluation: dict | None = None, description: str = "") -> Bundle:
    """One bundle from runs of distinct roles at one working resolution."""
    runs = [load_run(r) for r in run_dirs]
    roles = [r.config.role for r in runs]
    if len(set(roles)) != len(roles):
        raise InputError(f"train export: one run per role, got roles {', '.join(roles)}")
    resolutions = {r.config.resolution_mm for r in runs}
    if len(resolutions) != 1:
        raise InputError(f"train export: runs have different working resolutions {sorted(resolutions)} mm")
    (resolution,) = resolutions
    models = {}
    for run in runs:
        labels = TISSUE_LABELS if run.config.role in ("s1", "d") else SYNTHSEG_2.values.tolist()
        models[run.config.role] = (onnx_network(run), labels, asdict(run.config.spec()))
    provenance = {"source": "trained", "framework": f"torch {torch.__version__}",
                  "networks": {r.config.role: r.card() for r in runs}}
    if evaluation is not None:
        provenance["evaluation"] = evaluation
    return write_bundle(Path(out), model_id, models, provenance, resolution_mm=resolution,
                        licence="Apache-2.0 (trained on the Apache-2.0 SynthSeg training label maps)",
                        description=description, min_size=min_size_for(resolution))


def read_evaluation(path: str | Path) -> dict:
    """The JSON of ``morpho train evaluate`` (InputError naming the file when unreadable)."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read the evaluation JSON ({exc})") from None
