"""Trained runs -> ONNX networks and model bundles.

The PyTorch weights are converted to the Keras-layout dictionary of ``morphometry.segment.networks`` and the
graph is built by ``unet_model``, so a trained network is the same graph as an imported one.
``bundle.json`` provenance carries the model card: per network the training configuration, the
steps, wall time and hardware, the training and held-out maps and the last validation Dice, plus
the evaluation of :mod:`morphometry.segment.training.evaluate` when given.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import onnx
import torch

from morphometry.errors import InputError
from morphometry.labels import SYNTHSEG_2
from morphometry.segment import stages
from morphometry.segment.bundle import TISSUE_LABELS, Bundle, load_bundle, write_bundle
from morphometry.segment.networks import unet_model
from morphometry.segment.training.train import TrainConfig, latest_checkpoint, load_config
from morphometry.segment.training.unet_torch import UNet, keras_weights

OFFICIAL_MIN_SIZE_MM = 128  # the official networks' minimum input, 128 voxels of 1 mm
SIZE_MULTIPLE = 32  # the runtime pads every axis to a multiple of 32 voxels


@dataclass(frozen=True, eq=False)
class TrainedRun:
    """A run folder's configuration, its last checkpoint's network (eval mode) and its record."""

    path: Path
    config: TrainConfig
    model: UNet
    step: int
    elapsed_s: float
    hardware: str
    train_maps: list[str]
    held_out_maps: list[str]
    val_dice: float | None

    def card(self) -> dict:
        out = {"run": self.path.name, "config": asdict(self.config), "architecture": asdict(self.config.spec()),
               "steps": self.step, "training_time_s": round(self.elapsed_s, 1), "hardware": self.hardware,
               "train_maps": self.train_maps, "held_out_maps": self.held_out_maps,
               "final_validation_dice": self.val_dice}
        if self.config.init:
            out["initialised_from"] = _initialisation(self.config.init, self.config.role)
        return out


def _initialisation(source: str, role: str) -> dict:
    """Steps, time and hardware behind the weights that started a fine-tuning run, recursively: a
    run folder's own record, or the model card of the bundle network (``source`` and ``role``), as
    they are at export; only the path when neither is there any more."""
    if (Path(source) / "bundle.json").is_file():
        bundle = load_bundle(source)
        card = bundle.provenance.get("networks", {}).get(role, {})
        net = bundle.networks.get(role)
        out = {"bundle": source, "model_id": bundle.model_id, "sha256": net.sha256 if net else None}
        out.update({k: card[k] for k in ("steps", "training_time_s", "hardware", "initialised_from") if k in card})
        if "crop" in card.get("config", {}):
            out["crop"] = card["config"]["crop"]
        return out
    try:
        run = load_run(source)
    except InputError:
        return {"run": source, "note": "neither a run folder nor a bundle at export"}
    out = {"run": source, "steps": run.step, "training_time_s": round(run.elapsed_s, 1), "hardware": run.hardware,
           "crop": run.config.crop}
    if run.config.init:
        out["initialised_from"] = _initialisation(run.config.init, role)
    return out


def _last_val_dice(log_path: Path, step: int) -> float | None:
    """The last validation Dice logged at or before ``step`` (a killed run may have logged more)."""
    if not log_path.is_file():
        return None
    with open(log_path, newline="") as fh:
        values = [r["val_dice"] for r in csv.DictReader(fh) if r["val_dice"] and int(r["step"]) <= step]
    return float(values[-1]) if values else None


def load_run(run_dir: str | Path) -> TrainedRun:
    """Read a run folder (InputError when it has no checkpoint)."""
    run_dir = Path(run_dir)
    config = load_config(run_dir)
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise InputError(f"{run_dir}: no checkpoint to export (train first)")
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    model = UNet(config.spec(), config.bn_momentum)
    model.load_state_dict(state["model"])
    model.eval()
    return TrainedRun(run_dir, config, model, state["step"], state["elapsed_s"], state["hardware"],
                      state["train_maps"], state["held_out_maps"], _last_val_dice(run_dir / "log.csv", state["step"]))


def onnx_network(run: TrainedRun) -> onnx.ModelProto:
    """The run's network as the ONNX graph of ``morphometry.segment.networks`` (input ``input``, outputs
    ``logits`` and ``posteriors``)."""
    doc = f"morphometry-trained {run.config.role}, step {run.step}"
    return unet_model(run.config.spec(), keras_weights(run.model), doc)


def inference_stage(run_dir: str | Path, role: str) -> onnx.ModelProto:
    """The inference stage (``morphometry.segment.stages``) of a trained S1 or SynthSeg run: S1 -> one-hot
    tissue; SynthSeg -> smoothed, flip-averaged posteriors. Input ``image``."""
    run = load_run(run_dir)
    if run.config.role != role:
        raise InputError(f"{run_dir}: a {run.config.role} run, expected a {role} run")
    net = onnx_network(run)
    if role == "s1":
        return stages.tissue_stage(net)
    return stages.synthseg_stage(net, SYNTHSEG_2.flip_channels)


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
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read the evaluation JSON ({exc})") from None
