"""CPU segmentation per engine and precision: seconds per stage, GFLOP/s, peak memory, agreement.

Official network widths (random weights), ``synthseg+`` by default, on two synthetic heads made
from the package's default anatomy: a 1 mm head in an MNI-like field of view (197 x 233 x 189,
padded to 224 x 256 x 192 as the issue's MNI152 run) and a 6 mm axial scan of the same head.
Each configuration runs in a fresh process (so that its peak resident memory is its own), its
configurations alternating within each repeat; the table gives medians. Agreement is with the
first configuration (today's path: ONNX Runtime, fp32, whole image): hard labels (share of the
voxels that either labels as brain) and the largest relative difference of a structure's soft
volume. PyTorch fp32 (the ``[train]`` extra; oneDNN, the original's kernels) runs the same chain
of networks on the same tensor, as the proxy for the original TensorFlow code. ``--throughput``
compares one scan at a time on every thread with several processes of one thread each.

    python benchmarks/segment_cpu.py [--threads 2] [--repeats 3] [--scan 1mm_head] [--config ...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np

CONFIGS = {  # name -> Segmenter settings; the first is the reference of the agreement columns
    "onnxruntime-fp32": dict(engine="onnxruntime", precision="fp32", head_window=False, slab=0),
    "openvino-fp32": dict(engine="openvino", precision="fp32", head_window=False, slab=0),
    "openvino-bf16": dict(engine="openvino", precision="bf16", head_window=False, slab=0),
    "onnxruntime-fp32-slab": dict(engine="onnxruntime", precision="fp32", head_window=False, slab=16),
    "openvino-fp32-slab": dict(engine="openvino", precision="fp32", head_window=False, slab=16),
    "openvino-bf16-slab": dict(engine="openvino", precision="bf16", head_window=False, slab=16),
    "openvino-fp32-slab24": dict(engine="openvino", precision="fp32", head_window=False, slab=24),
    "openvino-fp32-slab32": dict(engine="openvino", precision="fp32", head_window=False, slab=32),
    "openvino-fp32-window": dict(engine="openvino", precision="fp32", head_window=True, slab=0),
    "openvino-bf16-window": dict(engine="openvino", precision="bf16", head_window=True, slab=0),
}
FOV = (197, 233, 189)  # voxels of the 1 mm scan (MNI-like; padded to 224 x 256 x 192)


# -- peak memory of this process -------------------------------------------------------------------
def reset_peak() -> None:
    """Reset the peak resident set size of this process (Linux: /proc/self/clear_refs)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_gb() -> float:
    """Peak resident set size (GB) since the last reset."""
    with open("/proc/self/status") as f:
        line = next(raw for raw in f if raw.startswith("VmHWM"))
    return int(line.split()[1]) / 1e6


# -- inputs ------------------------------------------------------------------------------------------
def head_scan(spacing_mm: tuple[float, float, float], seed: int) -> nib.Nifti1Image:
    """A T1-like scan of the default anatomy centred in the FOV, with ``spacing_mm`` (thick slices
    blurred and subsampled by the cohort simulator's acquisition)."""
    from morphometry.orientation import RasAlignment
    from morphometry.segment.synthesis.anatomy import default_anatomy
    from morphometry.segment.synthesis.protocols import ProtocolPriors, acquire, sample_protocol

    anatomy = default_anatomy()
    labels = np.zeros(FOV, dtype=anatomy.labels.dtype)
    src, dst = [], []
    for n, m in zip(anatomy.labels.shape, FOV):
        cut = max(n - m, 0) // 2
        pad = max(m - n, 0) // 2
        size = min(n, m)
        src.append(slice(cut, cut + size))
        dst.append(slice(pad, pad + size))
    labels[tuple(dst)] = anatomy.labels[tuple(src)]
    affine = anatomy.affine.copy()
    affine[:3, 3] += affine[:3, :3] @ np.array([s.start - d.start for s, d in zip(src, dst)], float)
    rng = np.random.default_rng(seed)
    protocol = sample_protocol(rng, ProtocolPriors(contrasts=("t1",), p_isotropic=1.0), labels.shape, 1.0)
    spacing = np.asarray(spacing_mm, float)
    protocol = replace(protocol, spacing_mm=spacing, thickness_mm=np.maximum(spacing, 1.0), noise_std=3.0,
                       orientation=RasAlignment((0, 1, 2), (False, False, False)))
    data, out_affine = acquire(labels, affine, protocol, rng)
    return nib.Nifti1Image(data, out_affine)


def conv_flops(architecture: dict, shape: tuple[int, ...], batch: int = 1) -> float:
    """Multiply-adds x 2 of a U-Net's convolutions on an input of ``shape`` voxels."""
    from morphometry.segment.networks import UNetSpec

    spec = UNetSpec(**{k: architecture[k] for k in UNetSpec.__dataclass_fields__})
    voxels = float(np.prod(shape)) * batch
    total = 0.0
    for name, arrays in spec.layer_shapes().items():
        if name.startswith("bn_"):
            continue
        kernel = arrays[0]
        if name.startswith("conv_downarm_"):
            level = int(name.split("_")[2])
        elif name.startswith("conv_uparm_"):
            level = spec.levels - 2 - (int(name.split("_")[2]) - spec.levels)
        else:  # likelihood, full resolution
            level = 0
        total += 2.0 * np.prod(kernel) * voxels / 8**level
    return total


# -- one configuration, in its own process --------------------------------------------------------
def worker(args: argparse.Namespace) -> None:
    from morphometry.io import load_scan
    from morphometry.segment.batch import finish_method, network_outputs, prepare
    from morphometry.segment.segmenter import Segmenter

    config = CONFIGS[args.worker]
    reset_peak()
    start = time.perf_counter()
    seg = Segmenter(args.models, args.methods, "cpu", args.threads, **config)
    record = {"seconds": {"start engine": time.perf_counter() - start}, "peak_gb": {"start engine": peak_gb()}}
    engine = seg.engine

    def measured(run):
        def stage(name, *inputs):
            reset_peak()
            out = run(name, *inputs)
            record["peak_gb"][f"network {name}"] = peak_gb()
            return out
        return stage

    engine._run, engine._run_slabs = measured(engine._run), measured(engine._run_slabs)
    wall = time.perf_counter()
    reset_peak()
    scan = load_scan(Path(args.scan))
    pre = prepare(scan, seg.preprocessing)
    record["seconds"]["load + preprocess"] = time.perf_counter() - wall
    record["peak_gb"]["load + preprocess"] = peak_gb()
    record["network_shape"] = list(pre.network_image.shape)
    labels, volumes, post_seconds, post_peak = {}, {}, 0.0, 0.0
    for net in network_outputs(seg.engine, pre, seg.options):
        reset_peak()
        t = time.perf_counter()
        out = finish_method({"scan_id": "x", "subject_id": "x", "session_id": None, "path": None}, scan, pre, net,
                            model_id="bench")
        post_seconds += time.perf_counter() - t
        post_peak = max(post_peak, peak_gb())
        labels[net.method.name] = out.labels
        volumes[net.method.name] = {k: float(v) for k, v in out.row.items() if _is_structure(k, v)}
    record["seconds"]["wall"] = time.perf_counter() - wall
    for name, seconds in seg.engine.timings.items():
        record["seconds"][f"network {name}"] = seconds
    record["seconds"]["postprocess"] = post_seconds
    record["peak_gb"]["postprocess"] = post_peak
    record["volumes"] = volumes
    np.savez_compressed(args.save, **labels)
    print(json.dumps(record))


def _is_structure(key: str, value) -> bool:
    from morphometry.labels import SYNTHSEG_2

    return key in set(SYNTHSEG_2.names[1:]) and isinstance(value, (float, np.floating))


def torch_worker(args: argparse.Namespace) -> None:
    """PyTorch fp32 (oneDNN) on the methods' chains of networks (random weights, same tensor shape):
    each stage takes the image and/or the one-hot argmax of the stage before, as the engine does;
    ``synthseg`` runs on the image and its left-right flip (one batch of 2); a chain prefix that
    several methods share runs once."""
    import torch
    from torch.nn import functional as F

    from morphometry.segment.bundle import load_bundle
    from morphometry.segment.methods import STAGES, resolve_methods
    from morphometry.segment.networks import UNetSpec
    from morphometry.segment.training.unet_torch import UNet

    torch.set_num_threads(args.threads or os.cpu_count())
    bundle = load_bundle(args.models)
    x = torch.rand(1, 1, *args.torch_shape)
    seconds: dict[str, float] = defaultdict(float)
    done: dict[tuple[str, ...], torch.Tensor] = {}  # chain prefix -> one-hot argmax of its last stage

    def network(role: str):
        arch = bundle.networks[role].architecture
        return UNet(UNetSpec(**{k: arch[k] for k in UNetSpec.__dataclass_fields__})).eval()

    with torch.inference_mode():
        for method in resolve_methods(args.methods):
            for i, stage in enumerate(method.chain):
                prefix = method.chain[: i + 1]
                if prefix in done:
                    continue
                role, takes_image, takes_labels = STAGES[stage]
                net = network(role)
                inputs = ([x] if takes_image else []) + ([done[prefix[:-1]]] if takes_labels else [])
                batch = torch.cat(inputs, 1)
                if stage == "synthseg":
                    batch = torch.cat([batch, batch.flip(2)], 0)
                t = time.perf_counter()
                logits = net(batch)
                seconds[f"network {stage}"] += time.perf_counter() - t
                labels = logits[:1].argmax(1)
                done[prefix] = F.one_hot(labels, logits.shape[1]).permute(0, 4, 1, 2, 3).float()
                del net, logits
    print(json.dumps({"seconds": seconds, "peak_gb": {}, "network_shape": list(args.torch_shape)}))


def gemm_worker(args: argparse.Namespace, n: int = 4096, repeats: int = 5) -> None:
    """Print (as JSON) the machine's matrix-multiply rate in GFLOP/s (PyTorch, oneDNN/MKL, ``n`` x ``n``,
    best of ``repeats``) in fp32 and bf16: about the most convolutions can reach on these threads."""
    import torch

    torch.set_num_threads(args.threads or os.cpu_count())
    rates = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        torch.mm(a, b)
        best = min(_timed(torch.mm, a, b) for _ in range(repeats))
        rates[name] = 2 * n**3 / best / 1e9
    print(json.dumps(rates))


def _timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


# -- the driver ------------------------------------------------------------------------------------
def _spawn(args: argparse.Namespace, extra: list[str]) -> dict:
    cmd = [sys.executable, __file__, "--models", str(args.models), "--threads", str(args.threads), *extra]
    for m in args.methods:
        cmd += ["--method", m]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"worker failed: {' '.join(cmd)}\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _agreement(ref_labels: np.ndarray, labels: np.ndarray, ref_volumes: dict, volumes: dict) -> tuple[float, float]:
    both = (ref_labels > 0) | (labels > 0)
    hard = float(np.mean(ref_labels[both] == labels[both])) if both.any() else 1.0
    rel = [abs(volumes[k] - v) / v for k, v in ref_volumes.items() if v > 100]
    return hard, max(rel) if rel else 0.0


def _flops_by_stage(bundle, shape: list[int], methods: list[str]) -> dict[str, float]:
    from morphometry.segment.methods import STAGES, resolve_methods

    stages = {s for m in resolve_methods(methods) for s in m.chain}
    flip = 2 if "synthseg" in stages else 1
    return {f"network {s}": conv_flops(bundle.networks[STAGES[s][0]].architecture, tuple(shape),
                                       batch=flip if s == "synthseg" else 1) for s in stages}


def compare(args: argparse.Namespace, tmp: Path) -> None:
    from morphometry.io import load_scan
    from morphometry.segment.bundle import load_bundle
    from morphometry.segment.preprocess import PreprocessConfig, preprocess

    bundle = load_bundle(args.models)
    spacings = {"1mm_head": (1.0, 1.0, 1.0), "6mm_axial": (1.0, 1.0, 6.0)}
    for scan_name in args.scan:
        path = tmp / f"{scan_name}.nii.gz"
        nib.save(head_scan(spacings[scan_name], seed=1), str(path))
        shape = preprocess(load_scan(path), PreprocessConfig(resolution_mm=bundle.resolution_mm)).image.shape
        runs: dict[str, list[dict]] = {c: [] for c in args.config + (["pytorch-fp32"] if args.torch else [])}
        labels: dict[str, dict] = {}
        for r in range(args.repeats):
            for name in runs:
                if name == "pytorch-fp32":
                    if r < args.torch_repeats:
                        runs[name].append(_spawn(args, ["--torch-worker", "--torch-shape", *map(str, shape)]))
                    continue
                save = tmp / f"{scan_name}_{name}.npz"
                runs[name].append(_spawn(args, ["--worker", name, "--scan-path", str(path), "--save", str(save)]))
                if name not in labels:
                    labels[name] = dict(np.load(save))
        _print_table(scan_name, nib.load(str(path)), runs, labels, bundle, args)


def _print_table(scan_name: str, img, runs: dict, labels: dict, bundle, args) -> None:
    ref = next(iter(labels))
    keys = sorted({k for rs in runs.values() for r in rs for k in r["seconds"]},
                  key=lambda k: (k != "start engine", k != "load + preprocess", not k.startswith("network"),
                                 k == "wall", k))
    print(f"\n## {scan_name}: {img.shape} voxels of {tuple(round(float(z), 2) for z in img.header.get_zooms())} mm, "
          f"methods {', '.join(args.methods)}, {args.threads or os.cpu_count()} threads, medians of "
          f"{args.repeats} (PyTorch: {args.torch_repeats})\n")
    print("| configuration | network input | " + " | ".join(keys) + " | GFLOP/s (networks) | peak GB | "
          "hard-label agreement | max soft-volume difference |")
    print("| --- | --- |" + " ---: |" * (len(keys) + 4))
    for name, rs in runs.items():
        if not rs:
            continue
        med = {k: statistics.median(r["seconds"][k] for r in rs if k in r["seconds"]) if any(
            k in r["seconds"] for r in rs) else None for k in keys}
        flops = _flops_by_stage(bundle, rs[0]["network_shape"], args.methods)
        network_s = sum(med[k] for k in flops if med.get(k))
        gflops = sum(flops.values()) / network_s / 1e9 if network_s else float("nan")
        peak = max((v for r in rs for v in r["peak_gb"].values()), default=float("nan"))
        if name in labels:
            pairs = [_agreement(labels[ref][m], labels[name][m], runs[ref][0]["volumes"][m], rs[0]["volumes"][m])
                     for m in labels[name]]
            agree = f"{min(p[0] for p in pairs):.4%} | {max(p[1] for p in pairs):.2%}"
        else:
            agree = "- | -"
        cells = " | ".join("-" if med[k] is None else f"{med[k]:.1f}" for k in keys)
        shape = "x".join(map(str, rs[0]["network_shape"]))
        print(f"| {name} | {shape} | {cells} | {gflops:.0f} | {peak:.2f} | {agree} |")
    print("\nPeak resident memory per stage (GB, largest of the runs):\n")
    stages = sorted({k for rs in runs.values() for r in rs for k in r["peak_gb"]})
    print("| configuration | " + " | ".join(stages) + " |")
    print("| --- |" + " ---: |" * len(stages))
    for name, rs in runs.items():
        if rs and rs[0]["peak_gb"]:
            print(f"| {name} | " + " | ".join(f"{max(r['peak_gb'].get(s, 0) for r in rs):.2f}" for s in stages) + " |")


def throughput(args: argparse.Namespace, tmp: Path) -> None:
    """Scans per hour: one process on all threads against one process per thread, each its share."""
    cores = args.threads or os.cpu_count()
    scans = []
    for i in range(args.throughput):
        path = tmp / "many" / f"scan{i}.nii.gz"
        path.parent.mkdir(exist_ok=True)
        nib.save(head_scan((1.0, 1.0, 6.0), seed=10 + i), str(path))
        scans.append(path)
    runner = "import sys; from morphometry.cli import main; sys.exit(main(sys.argv[1:]))"
    print(f"\n## throughput: {len(scans)} scans (6 mm axial), {', '.join(args.methods)}, engine auto\n")
    print("| processes x threads | wall s | scans per hour |")
    print("| --- | ---: | ---: |")
    for processes in (1, cores):
        threads = cores // processes
        start = time.perf_counter()
        procs = []
        for p in range(processes):
            share = [str(s) for s in scans[p::processes]]
            cmd = [sys.executable, "-c", runner, "-q", "segment", *share, "-o", str(tmp / f"tp{processes}_{p}"),
                   "--models", str(args.models), "--threads", str(threads), "--workers", "1"]
            procs.append(subprocess.Popen(cmd))
        if any(p.wait() for p in procs):
            raise SystemExit("a throughput run failed")
        wall = time.perf_counter() - start
        print(f"| {processes} x {threads} | {wall:.1f} | {len(scans) / wall * 3600:.0f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", dest="methods", action="append", default=None)
    ap.add_argument("--config", action="append", choices=tuple(CONFIGS), default=None,
                    help="configurations to compare (default: all; the first is the agreement reference)")
    ap.add_argument("--scan", action="append", choices=("1mm_head", "6mm_axial"), default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--torch-repeats", type=int, default=2, help="PyTorch proxy runs (it is slow)")
    ap.add_argument("--no-torch", dest="torch", action="store_false")
    ap.add_argument("--throughput", type=int, default=0, help="scans for the processes x threads comparison")
    ap.add_argument("--models", type=Path, default=None, help="bundle (default: official-width random networks)")
    ap.add_argument("--worker", choices=tuple(CONFIGS), help=argparse.SUPPRESS)
    ap.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--torch-shape", type=int, nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--gemm-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--scan-path", dest="scan_path", help=argparse.SUPPRESS)
    ap.add_argument("--save", type=Path, help=argparse.SUPPRESS)
    args, _ = ap.parse_known_args()
    args.methods = args.methods or ["synthseg+"]
    if args.worker:
        args.scan = args.scan_path
        worker(args)
        return
    if args.torch_worker:
        torch_worker(args)
        return
    if args.gemm_worker:
        gemm_worker(args)
        return
    args.config = args.config or list(CONFIGS)
    args.scan = args.scan or ["1mm_head", "6mm_axial"]
    if args.torch:
        try:
            import torch  # noqa: F401
        except ImportError:
            args.torch = False
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.models is None:
            from morphometry.segment.random_bundle import random_bundle

            args.models = random_bundle(tmp / "bundle", features=24, seed=0).root
        import platform

        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
              f"{platform.platform()}")
        if args.torch:
            rates = _spawn(args, ["--gemm-worker"])
            print("matrix multiply (PyTorch, 4096^2, best of 5): "
                  + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in rates.items()))
        compare(args, tmp)
        if args.throughput:
            throughput(args, tmp)


if __name__ == "__main__":
    main()
