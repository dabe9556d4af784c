"""Benchmark of training and of the trained starter bundle.

    .venv/bin/python benchmarks/training.py [--repeats 3] [--crop 32] [--width 8] [--levels 4]
                                             [--bundle segment/models/starter]

1. Example synthesis per role at 2 mm (the first shared training map, ../shared/data/label-maps)
   and one training step (forward, soft Dice, backward, Adam) of each role's network on one CPU
   thread. 2. Every method of the bundle on a whole synthetic head at the bundle's resolution
   (the first held-out map rendered T1-like), on 2 threads. Prints medians of wall-clock and CPU
   time (CPU time is what an idle core would take when the machine is shared).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MAPS = ROOT.parent / "shared" / "data" / "label-maps"


def timed(fn, repeats: int) -> tuple[float, float]:
    walls, cpus = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return statistics.median(walls), statistics.median(cpus)


def bench_training(args) -> None:
    import torch

    from morphometry.segment.training.data import (
        DataConfig,
        ExampleSource,
        load_maps,
        split_label_maps,
    )
    from morphometry.segment.training.losses import soft_dice_loss
    from morphometry.segment.training.runs import TrainConfig, inference_stage
    from morphometry.segment.training.unet_torch import UNet

    torch.set_num_threads(1)
    train_paths, _ = split_label_maps(MAPS, 3)
    maps = load_maps(train_paths[:1], 2.0)
    print(f"## training, crop {args.crop}^3 at 2 mm, width {args.width}, {args.levels} levels, 1 thread\n")
    print("| role | example synthesis wall s | CPU s | train step wall s | CPU s |")
    print("| --- | ---: | ---: | ---: | ---: |")
    previous = {}
    if args.s1_run:
        previous["d"] = inference_stage(args.s1_run, "s1").SerializeToString()
    if args.synthseg_run:
        previous["d_all"] = inference_stage(args.synthseg_run, "synthseg").SerializeToString()
    for role in ("s1", "s2", "synthseg", "d", "d_all"):
        if role in ("d", "d_all") and role not in previous:
            continue
        source = ExampleSource(maps, DataConfig(role, args.crop, 2.0), previous.get(role))
        rng = np.random.default_rng(0)
        synth = timed(lambda: source.example(rng), args.repeats)
        x, y = source.example(rng)
        config = TrainConfig(role=role, label_maps=str(MAPS), crop=args.crop, width=args.width, levels=args.levels)
        model = UNet(config.spec())
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        xb, yb = torch.from_numpy(x[None]), torch.from_numpy(y[None])

        def step():
            loss = soft_dice_loss(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()

        step()
        train_t = timed(step, args.repeats)
        print(f"| {role} | {synth[0]:.2f} | {synth[1]:.2f} | {train_t[0]:.2f} | {train_t[1]:.2f} |")


def bench_inference(args) -> None:
    from morphometry.segment.bundle import load_bundle
    from morphometry.segment.methods import resolve_methods, supported_methods
    from morphometry.segment.runtime import Engine, RuntimeConfig
    from morphometry.segment.training.data import load_maps, split_label_maps
    from morphometry.segment.training.evaluate import Condition, _pad, render_scan

    bundle = load_bundle(args.bundle)
    _, held_out = split_label_maps(MAPS, 3)
    labels = load_maps(held_out[:1], bundle.resolution_mm)[0]
    image, _ = _pad(render_scan(labels, bundle.resolution_mm, Condition("t1", 1.0, 3.0), np.random.default_rng(0)),
                    bundle.min_size)
    print(f"\n## inference, bundle {bundle.model_id}, whole head {image.shape} voxels at {bundle.resolution_mm:g} mm, "
          f"ONNX Runtime CPU, 2 threads\n")
    print("| method | wall s | CPU s |")
    print("| --- | ---: | ---: |")
    for name in supported_methods(set(bundle.networks)):
        engine = Engine(bundle, resolve_methods([name]), RuntimeConfig(device="cpu", threads=2))
        list(engine.segment(image))
        wall, cpu = timed(lambda: list(engine.segment(image)), args.repeats)
        print(f"| {name} | {wall:.2f} | {cpu:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--crop", type=int, default=32)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--levels", type=int, default=4)
    parser.add_argument("--bundle", type=Path, default=ROOT / "segment" / "models" / "starter")
    parser.add_argument("--s1-run", type=Path, default=None, help="a trained S1 run, to time D examples too")
    parser.add_argument("--synthseg-run", type=Path, default=None,
                        help="a trained SynthSeg run, to time D_all examples too")
    args = parser.parse_args()
    if not MAPS.is_dir():
        raise SystemExit(f"{MAPS} not found: the benchmark needs the shared training label maps")
    bench_training(args)
    if (args.bundle / "bundle.json").is_file():
        bench_inference(args)


if __name__ == "__main__":
    main()
