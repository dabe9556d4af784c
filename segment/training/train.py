"""The training loop: Adam on soft Dice (optional wl2 warm-up), checkpoints, resume, validation.

A run folder (:mod:`morphometry.segment.training.runs`) holds ``config.json`` (the
:class:`~morphometry.segment.training.runs.TrainConfig`), ``checkpoints/step_NNNNNNN.pt``
(model, optimiser, AMP scaler, step, torch RNG state, wall time so far) and ``log.csv`` (one row
per step: loss; every ``validate_every`` steps the mean Dice over the foreground labels of fixed
synthetic examples drawn from the held-out label maps). Because batch ``s`` is a pure function
of (seed, s) (:mod:`morphometry.segment.training.data`), resuming continues from the last checkpoint with
exactly the data the uninterrupted run would have seen. On a CUDA device the forward pass runs
under float16 autocast with a gradient scaler; on the CPU in float32. Weights and batches use the
channels-last-3d memory format (about 20 % faster per step on the CPU at 64^3, docs/benchmarks.md).
"""

from __future__ import annotations

import csv
import os
import platform
import time
from pathlib import Path

import numpy as np
import onnx
import torch

from morphometry.atomic import atomic_write
from morphometry.errors import InputError, ModelError
from morphometry.progress import Progress, log
from morphometry.segment.bundle import load_bundle, verify_bundle
from morphometry.segment.networks import UNetSpec, Weights, read_weights
from morphometry.segment.training.data import DataConfig, ExampleSource, batches, load_maps, split_label_maps
from morphometry.segment.training.losses import hard_dice, soft_dice_loss, wl2_loss
from morphometry.segment.training.runs import (
    TrainConfig,
    checkpoints,
    inference_stage,
    latest_checkpoint,
    load_checkpoint,
    load_config,
    save_config,
)
from morphometry.segment.training.unet_torch import UNet, load_keras_weights

VALIDATION_STREAM = 2**31  # seed-sequence entry of the validation examples (steps stay below it)
RECALIBRATION_STREAM = 2**31 + 1  # and of the batch-norm recalibration examples
KEEP_CHECKPOINTS = 3
LOG_FIELDS = ("step", "loss", "val_dice", "elapsed_s")
MEMORY_FORMAT = torch.channels_last_3d


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA, float16 autocast)"
    return f"{_cpu_name()} ({os.cpu_count()} cores), {torch.get_num_threads()} torch threads, float32"


def choose_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def validation_set(source: ExampleSource, config: TrainConfig) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out = []
    for i in range(config.validation_examples):
        x, y = source.example(np.random.default_rng([config.seed, VALIDATION_STREAM, i]))
        out.append((torch.from_numpy(x[None]), torch.from_numpy(y)))
    return out


def validate(model: UNet, examples, device: torch.device) -> float:
    """Mean hard Dice over the foreground labels present, averaged over the examples."""
    model.eval()
    scores = []
    with torch.no_grad():
        for x, y in examples:
            pred = model(x.to(device)).argmax(1)[0].cpu()
            dice = hard_dice(pred, y, model.spec.n_labels)[1:]
            scores.append(float(torch.nanmean(dice)))
    model.train()
    return float(np.mean(scores)) if scores else float("nan")


def recalibrate_batchnorm(model: UNet, source: ExampleSource, config: TrainConfig, device: torch.device) -> None:
    """Replace every batch norm's running mean and variance by their plain averages over
    ``recalibration_examples`` fresh training examples (forward passes in training mode, no
    gradient). The exponential averages that training keeps, with one example per batch, trail
    the moving weights and are noisy; inference (and validation) use these running statistics."""
    n = config.recalibration_examples
    if n < 1:
        return
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm3d)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    with torch.no_grad():
        for i in range(n):
            x, _ = source.example(np.random.default_rng([config.seed, RECALIBRATION_STREAM, i]))
            model(torch.from_numpy(x[None]).to(device))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum


def _initial_weights(config: TrainConfig, model: UNet, device: torch.device) -> None:
    """Load into ``model`` the last weights of the run folder ``config.init``, or the network of
    this role in the model bundle ``config.init``; either must have this run's architecture."""
    if (Path(config.init) / "bundle.json").is_file():
        load_keras_weights(model, _bundle_weights(config))
        return
    ckpt = latest_checkpoint(config.init)
    if ckpt is None:
        raise _init_error(config, f"no checkpoint in {Path(config.init) / 'checkpoints'}")
    source = load_config(config.init)
    if source.spec() != config.spec():
        raise _init_error(config, f"its network ({source.role}, width {source.width}, {source.levels} levels) "
                          "differs from this run's")
    model.load_state_dict(load_checkpoint(ckpt, device)["model"])


def _init_error(config: TrainConfig, message: str) -> InputError:
    return InputError(f"{config.init}: {message}", setting="init")


def _bundle_weights(config: TrainConfig) -> Weights:
    """The weights of the network of this run's role in the bundle ``config.init``."""
    try:
        bundle = load_bundle(config.init)
    except ModelError as exc:
        raise _init_error(config, str(exc)) from None
    net = bundle.networks.get(config.role)
    if net is None:
        raise _init_error(config, f"the bundle has no {config.role} network (it has {', '.join(bundle.networks)})")
    problems = verify_bundle(bundle, (config.role,))
    if problems:
        raise _init_error(config, "; ".join(problems))
    if bundle.resolution_mm != config.resolution_mm:
        raise _init_error(config, f"the bundle works at {bundle.resolution_mm:g} mm, this run at "
                          f"{config.resolution_mm:g} mm")
    try:
        spec = UNetSpec(**net.architecture)
        if spec != config.spec():
            raise _init_error(config, f"its {config.role} network ({spec}) differs from this run's ({config.spec()})")
        return read_weights(onnx.load(str(bundle.path(config.role))), spec)
    except (TypeError, ValueError) as exc:
        raise _init_error(config, f"cannot read its {config.role} weights ({exc})") from None


def _truncate_log(path: Path, last_step: int) -> None:
    """Drop log rows written after the checkpoint a resumed run restarts from."""
    if not path.is_file():
        return
    with open(path, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= last_step]
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, LOG_FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def _save_checkpoint(run_dir: Path, state: dict) -> Path:
    folder = run_dir / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step_{state['step']:07d}.pt"
    atomic_write(path, lambda tmp: torch.save(state, tmp))
    for old in checkpoints(run_dir)[:-KEEP_CHECKPOINTS]:
        old.unlink()
    return path


def _make_optimiser(model: UNet, config: TrainConfig) -> torch.optim.Adam:
    return torch.optim.Adam(model.parameters(), lr=config.lr, eps=1e-7)  # Keras Adam epsilon


def previous_stage(config: TrainConfig) -> bytes | None:
    """The serialised inference stage of the run D / D_all learns to correct."""
    if config.role not in ("d", "d_all"):
        return None
    if not config.previous:
        raise InputError(f"training {config.role} needs the run folder of "
                         f"{'an S1' if config.role == 'd' else 'a SynthSeg'} training run", setting="previous")
    wanted = "s1" if config.role == "d" else "synthseg"
    return inference_stage(config.previous, wanted).SerializeToString()


def train(config: TrainConfig, run_dir: str | Path, resume: bool = False, *, progress: bool = True) -> Path:
    """Train (or continue, ``resume=True``) a run; return the last checkpoint. Progress (steps,
    with rate and time left) and the validation Dice go to the ``morphometry`` logger;
    ``progress=False`` silences the progress line."""
    run_dir = Path(run_dir)
    ckpt_path = latest_checkpoint(run_dir)
    if resume and ckpt_path is None:
        raise InputError(f"{run_dir}: resuming needs a checkpoint in {run_dir / 'checkpoints'}", setting="resume")
    if not resume and ckpt_path is not None:
        raise InputError(f"{run_dir}: already holds checkpoints; resume it or choose a new folder", setting="resume")
    save_config(config, run_dir)
    device = choose_device()
    torch.manual_seed(config.seed)
    model = UNet(config.spec(), config.bn_momentum).to(device, memory_format=MEMORY_FORMAT)
    optimiser = _make_optimiser(model, config)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    start, elapsed = 1, 0.0
    if ckpt_path is not None:
        state = load_checkpoint(ckpt_path, device)
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        start, elapsed = state["step"] + 1, state["elapsed_s"]
        log.info(f"resuming {run_dir} at step {start}")
    elif config.init:
        _initial_weights(config, model, device)
        log.info(f"starting from the weights of {config.init}")
    log_path = run_dir / "log.csv"
    _truncate_log(log_path, start - 1)
    if start > config.steps:
        return ckpt_path  # type: ignore[return-value]

    train_paths, val_paths = split_label_maps(config.label_maps, config.held_out)
    data = DataConfig(config.role, config.crop, config.resolution_mm, config.d_inputs)
    previous = previous_stage(config)
    margin = config.brain_margin_mm
    source = ExampleSource(load_maps(train_paths, config.resolution_mm, margin), data, previous)
    val_examples = validation_set(ExampleSource(load_maps(val_paths, config.resolution_mm, margin), data, previous),
                                  config)

    new_log = not log_path.is_file()
    last = ckpt_path
    bar = Progress(config.steps - start + 1, f"train {config.role}", "step", enabled=progress)
    with bar, open(log_path, "a", newline="") as fh:
        writer = csv.DictWriter(fh, LOG_FIELDS)
        if new_log:
            writer.writeheader()
        tick = time.perf_counter()
        for step, x, y in batches(source, config.seed, start, config.steps, config.batch_size, config.workers):
            if config.wl2_steps and step == config.wl2_steps + 1:
                optimiser = _make_optimiser(model, config)  # the original restarts Adam after wl2
            xb = torch.from_numpy(x).to(device, memory_format=MEMORY_FORMAT)
            yb = torch.from_numpy(y).to(device)
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=device.type == "cuda"):
                logits = model(xb)
            loss = wl2_loss(logits, yb) if step <= config.wl2_steps else soft_dice_loss(logits, yb)
            optimiser.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimiser)
            scaler.update()
            if step == config.steps:
                recalibrate_batchnorm(model, source, config, device)
            now = time.perf_counter()
            elapsed, tick = elapsed + now - tick, now
            loss_value = float(loss.detach())
            row = {"step": step, "loss": f"{loss_value:.5f}", "val_dice": "", "elapsed_s": f"{elapsed:.1f}"}
            if step % config.validate_every == 0 or step == config.steps:
                row["val_dice"] = f"{validate(model, val_examples, device):.4f}"
                log.info(f"step {step}: loss {loss_value:.4f}, validation Dice {row['val_dice']}")
            writer.writerow(row)
            fh.flush()
            if step % config.checkpoint_every == 0 or step == config.steps:
                last = _save_checkpoint(run_dir, {
                    "step": step, "model": model.state_dict(), "optimiser": optimiser.state_dict(),
                    "scaler": scaler.state_dict(), "torch_rng": torch.get_rng_state(), "elapsed_s": elapsed,
                    "hardware": hardware(device), "train_maps": [p.name for p in train_paths],
                    "held_out_maps": [p.name for p in val_paths]})
            bar.update()
            tick = time.perf_counter()
    return last  # type: ignore[return-value]
