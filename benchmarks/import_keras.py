"""Benchmark: Keras HDF5 -> bundle import time, and ONNX Runtime CPU inference of imported networks.

1. Import time (read with h5py, infer and check the architecture, build ONNX, write the bundle) of
   each reference fixture (../shared/fixtures/keras-reference, small widths) and of a synthetic
   robust file at the official widths (S1 24, D 16, S2 24; 53,574,739 parameters) written here with
   h5py from seeded random weights in the Keras layout.
2. ONNX Runtime (CPU) inference time of the imported official-width S1, D and S2 networks on a
   SIZE^3 volume, and of the whole S1 -> D -> S2 chain through the bundle's stage graphs.

Prints tables of medians (wall-clock and process CPU seconds). Usage:
    .venv/bin/python benchmarks/import_keras.py [--size 160] [--repeats 3] [--threads 0]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from morphometry.segment import stages
from morphometry.segment.keras_import import import_keras, write_keras_h5
from morphometry.segment.networks import OFFICIAL_SPECS, random_weights

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "keras-reference"
FIXTURE_FILES = ("robust_weights.h5", "robust_full.h5", "synthseg_weights.h5", "parc_weights.h5", "qc_weights.h5")


@dataclass(frozen=True)
class BenchConfig:
    size: int = 160  # voxels per axis of the inference volume
    repeats: int = 3  # timed runs per measurement (median reported)
    threads: int = 0  # ONNX Runtime intra-op threads; 0 = all cores
    seed: int = 0


def median_time(fn, repeats: int) -> tuple[float, float]:
    """Median wall-clock and median process CPU seconds of ``repeats`` calls (CPU time shows the work
    done when other jobs share the cores)."""
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def time_import(files: list[Path], work: Path, repeats: int) -> tuple[float, float]:
    return median_time(lambda: import_keras(files, Path(tempfile.mkdtemp(dir=work)) / "bundle"), repeats)


def write_official_robust(path: Path, rng: np.random.Generator) -> int:
    """Write a robust (S1, D, S2) file at the official widths; return its parameter count."""
    networks = {prefix: random_weights(OFFICIAL_SPECS[role], rng)
                for prefix, role in (("unet", "s1"), ("l2l", "d"), ("unet2", "s2"))}
    write_keras_h5(path, networks)
    return sum(a.size for layers in networks.values() for arrays in layers.values() for a in arrays)


def session(model_or_path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    source = model_or_path.SerializeToString() if hasattr(model_or_path, "SerializeToString") else str(model_or_path)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def bench_inference(bundle, cfg: BenchConfig, rng: np.random.Generator) -> list[tuple[str, float, tuple[float, float]]]:
    """(network, session creation s, (median run wall s, CPU s)) for S1, D, S2 and the chain."""
    import onnx

    n = cfg.size
    image = rng.uniform(0, 1, (1, 1, n, n, n)).astype(np.float32)
    tissue = (rng.integers(0, 5, (1, 1, n, n, n)) == np.arange(5).reshape(1, 5, 1, 1, 1)).astype(np.float32)
    feeds = {"s1": {"input": image}, "d": {"input": tissue},
             "s2": {"input": np.concatenate([image, tissue], axis=1)}}
    rows = []
    for role, feed in feeds.items():
        start = time.perf_counter()
        sess = session(bundle.path(role), cfg.threads)
        created = time.perf_counter() - start
        rows.append((role, created, median_time(lambda s=sess, f=feed: s.run(["posteriors"], f), cfg.repeats)))
    nets = {role: onnx.load(str(bundle.path(role))) for role in ("s1", "d", "s2")}
    chain = [session(stages.tissue_stage(nets["s1"]), cfg.threads),
             session(stages.denoise_stage(nets["d"]), cfg.threads),
             session(stages.s2_stage(nets["s2"]), cfg.threads)]

    def run_chain():
        (t,) = chain[0].run(None, {"image": image})
        (t,) = chain[1].run(None, {"previous": t})
        return chain[2].run(None, {"image": image, "previous": t})

    rows.append(("s1 -> d -> s2 (stage graphs)", float("nan"), median_time(run_chain, cfg.repeats)))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=BenchConfig.size)
    parser.add_argument("--repeats", type=int, default=BenchConfig.repeats)
    parser.add_argument("--threads", type=int, default=BenchConfig.threads)
    args = parser.parse_args(argv)
    cfg = BenchConfig(args.size, args.repeats, args.threads)
    rng = np.random.default_rng(cfg.seed)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}; medians of {cfg.repeats} runs")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        print("\n| file | MB | import wall s | import CPU s |\n| --- | ---: | ---: | ---: |")
        if FIXTURES.is_dir():
            for name in FIXTURE_FILES:
                path = FIXTURES / name
                wall, cpu = time_import([path], work, cfg.repeats)
                print(f"| {name} (fixture) | {path.stat().st_size / 1e6:.1f} | {wall:.2f} | {cpu:.2f} |")
        official = work / "synthseg_robust_official_width.h5"
        start = time.perf_counter()
        n_params = write_official_robust(official, rng)
        written = time.perf_counter() - start
        wall, cpu = time_import([official], work, cfg.repeats)
        print(f"| synthetic official-width robust ({n_params:,} parameters; written in {written:.1f} s) | "
              f"{official.stat().st_size / 1e6:.0f} | {wall:.2f} | {cpu:.2f} |")
        bundle = import_keras([official], work / "official")
        import onnxruntime as ort

        print(f"\nONNX Runtime {ort.__version__} CPU, official widths, input {cfg.size}^3, "
              f"threads {cfg.threads or 'default'}")
        print("| network | session s | run wall s | run CPU s |\n| --- | ---: | ---: | ---: |")
        for name, created, (wall, cpu) in bench_inference(bundle, cfg, rng):
            print(f"| {name} | {'' if np.isnan(created) else f'{created:.2f}'} | {wall:.2f} | {cpu:.2f} |")
        print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
