"""Per-stage seconds per scan of ``morpho segment`` on the CPU, official network widths (random weights).

Two synthetic scans: a 1 mm isotropic head and a 6 mm axial clinical scan (1 x 1 x 6 mm). For each,
the batch runs end to end (load, preprocess, every network stage, postprocess, write) and the
provenance timings are printed as a table, with the share of time spent outside the networks.

    python benchmarks/segment_cpu.py [--method synthseg+ ...] [--shape 160 192 160] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np


def phantom(shape, spacing, rng) -> nib.Nifti1Image:
    grid = np.indices(shape).astype(np.float32)
    centre = (np.array(shape, np.float32) - 1)[:, None, None, None] / 2
    r = np.sqrt((((grid - centre) / (centre + 1)) ** 2).sum(0))
    data = 100 * (r < 0.85) + 80 * (r < 0.6) - 40 * (r < 0.2) + rng.normal(0, 4, shape)
    return nib.Nifti1Image(data.astype(np.int16), np.diag([*spacing, 1.0]))


def main() -> None:
    from morphometry.cli import main as morpho
    from morphometry.segment.random_bundle import random_bundle

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--method", action="append", default=None)
    ap.add_argument("--shape", type=int, nargs=3, default=[160, 192, 160], help="1 mm head shape (voxels)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    methods = args.method or ["synthseg+"]
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        bundle = random_bundle(tmp / "bundle", features=24, seed=0)
        print(f"bundle of official-width random networks written in {time.perf_counter() - t0:.1f} s")
        nx, ny, nz = args.shape
        scans = {"1mm_head": phantom(tuple(args.shape), (1.0, 1.0, 1.0), rng),
                 "6mm_axial": phantom((nx, ny, max(4, nz // 6)), (1.0, 1.0, 6.0), rng)}
        for name, img in scans.items():
            nib.save(img, str(tmp / f"{name}.nii.gz"))
            runs = []
            for r in range(args.repeats):
                out = tmp / f"out_{name}_{r}"
                cmd = ["segment", str(tmp / f"{name}.nii.gz"), "-o", str(out), "--models", str(bundle.root),
                       "--threads", str(args.threads), "--workers", "1"]
                for m in methods:
                    cmd += ["--method", m]
                start = time.perf_counter()
                morpho(cmd)
                wall = time.perf_counter() - start
                stages = json.loads((out / "provenance.json").read_text())["seconds_per_stage"]
                runs.append({**stages, "wall": wall})
            keys = sorted({k for run in runs for k in run})
            median = {k: statistics.median(run.get(k, 0.0) for run in runs) for k in keys}
            network = sum(v for k, v in median.items() if k.startswith("network:"))
            outside = sum(median.get(k, 0.0) for k in ("load", "preprocess", "postprocess", "write"))
            print(f"\n{name} {img.shape} voxel {img.header.get_zooms()} methods {', '.join(methods)} "
                  f"(median of {args.repeats})")
            print(f"{'stage':<22}{'seconds':>10}")
            for k in keys:
                print(f"{k:<22}{median[k]:>10.2f}")
            print(f"{'outside / network':<22}{outside / network:>10.1%}")


if __name__ == "__main__":
    main()
