"""Training run folders: the configuration, the checkpoints, and the trained network read back.

A run folder holds ``config.json`` (the :class:`TrainConfig`), ``checkpoints/step_NNNNNNN.pt``
(written by :mod:`morphometry.segment.training.train`) and ``log.csv``. :func:`load_run` reads the
last checkpoint back as a :class:`TrainedRun`; :func:`onnx_network` turns it into the ONNX graph of
``morphometry.segment.networks`` (what :mod:`morphometry.segment.training.export` writes into a
bundle) and :func:`inference_stage` into the stage whose outputs D / D_all learn to correct.
"""

from __future__ import annotations

import csv
import json
import pickle
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import onnx
import torch

from morphometry.atomic import atomic_write
from morphometry.errors import InputError
from morphometry.labels import SYNTHSEG_2
from morphometry.segment import stages
from morphometry.segment.bundle import load_bundle
from morphometry.segment.networks import UNetSpec, unet_model
from morphometry.segment.training.data import D_INPUTS, ROLES, role_channels
from morphometry.segment.training.unet_torch import UNet, keras_weights

D_VARIANTS = ("paper", "official")


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Sizes in voxels of the working grid, ``resolution_mm`` in mm."""

    role: str
    label_maps: str
    steps: int = 1000
    crop: int = 48
    width: int = 8
    levels: int = 4
    resolution_mm: float = 2.0
    seed: int = 0
    lr: float = 1e-4
    batch_size: int = 1
    checkpoint_every: int = 50
    validate_every: int = 100
    validation_examples: int = 4
    held_out: int = 3
    brain_margin_mm: float = 20.0  # crops are drawn in the brain's bounding box plus this margin
    workers: int = 1
    wl2_steps: int = 0
    bn_momentum: float = 0.01
    d_variant: str = "paper"
    d_skips_removed: int = 2  # D / D_all decoder steps without a skip at the finest levels (paper: 2 at 1 mm;
    # more than the levels - 1 skips removes them all)
    previous: str | None = None  # run folder of the network D / D_all corrects (S1 / SynthSeg)
    d_inputs: str = "degraded"  # D / D_all learn from the previous network on degraded | generator images
    init: str | None = None  # run folder or model bundle whose weights start this run (fine-tuning)
    recalibration_examples: int = 32  # examples whose batch statistics become BN's running ones at the end

    def __post_init__(self):
        if self.role not in ROLES:
            raise InputError(f"unknown role {self.role!r} (choose from {', '.join(ROLES)})", setting="role")
        if self.d_inputs not in D_INPUTS:
            raise InputError(f"{self.d_inputs!r}: choose {' or '.join(D_INPUTS)}", setting="d_inputs")
        if self.d_variant not in D_VARIANTS:
            raise InputError(f"{self.d_variant!r}: choose {' or '.join(D_VARIANTS)}", setting="d_variant")
        for name, least in (("steps", 1), ("batch_size", 1), ("width", 1), ("levels", 2), ("d_skips_removed", 0)):
            if getattr(self, name) < least:
                raise InputError(f"must be at least {least} (got {getattr(self, name)})", setting=name)
        if self.crop % 2 ** (self.levels - 1):
            raise InputError(f"{self.crop} must be a multiple of {2 ** (self.levels - 1)} "
                             f"(2^(levels-1) for {self.levels} levels)", setting="crop")

    def spec(self) -> UNetSpec:
        """The network: S1/S2/SynthSeg U-Nets with ``width`` features doubling per level; D and
        D_all the paper's light denoiser (one conv per level, constant width, no skips at the top
        two levels by default) or the official release's (5^3 kernels, two convs, doubling widths).
        The paper's two missing skips at 1 mm leave D no detail finer than 4 mm; at a 2 mm working
        grid one missing skip keeps that scale."""
        c_in, c_out = role_channels(self.role)
        spec = UNetSpec(c_in, c_out, features=self.width, levels=self.levels)
        if self.role in ("d", "d_all"):
            if self.d_variant == "paper":
                return replace(spec, convs_per_level=1, multiplier=1, skips_removed=self.d_skips_removed)
            return replace(spec, kernel=5, skips_removed=self.d_skips_removed)
        return spec


def save_config(config: TrainConfig, run_dir: Path) -> None:
    """Write ``run_dir/config.json``."""
    text = json.dumps(asdict(config), indent=1)
    atomic_write(run_dir / "config.json", lambda tmp: tmp.write_text(text))


def load_config(run_dir: str | Path) -> TrainConfig:
    """The configuration of a run folder (InputError when it is not one)."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise InputError(f"{run_dir}: not a training run (no config.json)")
    try:
        return TrainConfig(**json.loads(path.read_text()))
    except (TypeError, ValueError) as exc:
        raise InputError(f"{path}: malformed training configuration ({exc})") from None


def checkpoints(run_dir: str | Path) -> list[Path]:
    """The run's checkpoint files, oldest first."""
    return sorted((Path(run_dir) / "checkpoints").glob("step_*.pt"))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest checkpoint file, or None before the first."""
    found = checkpoints(run_dir)
    return found[-1] if found else None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """A checkpoint's state loaded with ``torch.load(weights_only=True)``: tensors, plain
    containers, numbers and text; a file holding other pickled objects is refused (loading it
    could run code) with InputError naming the file, as is an unreadable one."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        cause = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path}: refused: the checkpoint holds pickled objects beyond tensors, numbers and text, "
                         f"which could run code when loaded ({cause})") from None
    except (OSError, RuntimeError, EOFError) as exc:
        raise InputError(f"{path}: unreadable checkpoint ({type(exc).__name__}: {exc})") from None


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
        """The model-card entry of this network in ``bundle.json`` provenance."""
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
    state = load_checkpoint(ckpt)
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
