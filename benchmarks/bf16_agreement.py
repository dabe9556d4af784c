"""Where bf16's disagreement with fp32 comes from, against the chain's own fp32 noise floor.

Runs a bundle (default: the starter models) through OpenVINO on scans (default: three of the e2e
fixture inputs in ../shared) and compares each variant with plain fp32: the share of voxels with
equal hard labels and the largest relative soft-volume difference of a structure above 1 cm^3.
Variants:

* fp32 on the input multiplied voxel by voxel by 1 + U(-e, e): how far rounding-sized noise in
  the image (far below any MRI noise) alone moves the volumes, the floor any reduced precision
  is measured against;
* bf16 on every graph, and on one network or one group of levels only (the graphs whose names
  match a pattern compiled with the bf16 hint, the others fp32).

    python benchmarks/bf16_agreement.py [--models starter] [--method synthseg+ --method synthseg]
        [--scan PATH ...] [--threads 2]
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import nibabel as nib
import numpy as np

from morphometry.labels import SYNTHSEG_2
from morphometry.segment import runtime
from morphometry.segment.openvino_backend import OpenVinoBackend, cpu_has_bf16
from morphometry.segment.segmenter import Segmenter

E2E_INPUTS = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "e2e-original" / "inputs"
SCANS = ("t1_1mm", "flair_oblique", "t2_0p8mm")
NOISE = (5e-4, 2e-3)  # relative input noise of the fp32 floor rows (bf16 rounds to 2^-9 = 2e-3)
PLACEMENTS = {  # row -> graphs compiled in bf16 (slab parts are named network/part)
    "bf16 everywhere": r".",
    "bf16 in S1 only": r"^s1/",
    "bf16 in D only": r"^d/",
    "bf16 in S2 only": r"^s2/",
    "bf16 in the levels below the top two only (mid)": r"/mid$",
}
MIN_VOLUME_MM3 = 1000.0


def backend_class(pattern: str) -> type:
    """An OpenVINO backend compiling the graphs whose names match ``pattern`` in bf16, others fp32."""
    bf16 = re.compile(pattern)

    class Mixed(OpenVinoBackend):
        def compile(self, name, model):
            self._config["INFERENCE_PRECISION_HINT"] = "bf16" if bf16.search(name) else "f32"
            super().compile(name, model)

    return Mixed


def run(models: str, methods: tuple[str, ...], threads: int, image: nib.Nifti1Image, bf16: str | None) -> dict:
    """{method: (labels, {structure: soft volume mm^3})} of one scan."""
    if bf16 is not None:
        runtime.OpenVinoBackend = backend_class(bf16)
    try:
        out = Segmenter(models, methods, "cpu", threads, engine="openvino").segment(image, scan_id="x")
    finally:
        runtime.OpenVinoBackend = OpenVinoBackend
    return {m: (np.asarray(out[m].labels.dataobj), {n: float(out[m].volumes[n]) for n in SYNTHSEG_2.names[1:]})
            for m in methods}


def compare(reference: dict, other: dict) -> dict:
    """{method: (hard-label agreement, worst relative soft-volume difference, its structure)}."""
    rows = {}
    for method, (labels, volumes) in reference.items():
        o_labels, o_volumes = other[method]
        worst = max((abs(o_volumes[n] - v) / v, n) for n, v in volumes.items() if v > MIN_VOLUME_MM3)
        rows[method] = (float(np.mean(labels == o_labels)), *worst)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="starter")
    ap.add_argument("--method", dest="methods", action="append", default=None)
    ap.add_argument("--scan", dest="scans", action="append", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    methods = tuple(args.methods or ("synthseg+", "synthseg"))
    scans = args.scans or [E2E_INPUTS / f"{s}.nii.gz" for s in SCANS]
    missing = [str(s) for s in scans if not s.is_file()]
    if missing:
        raise SystemExit(f"scan not found: {', '.join(missing)} (pass --scan PATH)")
    if not cpu_has_bf16():
        raise SystemExit("this CPU has no bf16 kernels (AVX512-BF16 or AMX)")
    rng = np.random.default_rng(0)
    print("| variant | scan | " + " | ".join(f"{m}: labels | {m}: worst structure" for m in methods) + " |")
    print("| --- | --- |" + " ---: | --- |" * len(methods))
    for path in scans:
        image = nib.load(path)
        data = np.asarray(image.dataobj, dtype=np.float32)
        reference = run(args.models, methods, args.threads, image, None)
        variants = {}
        for eps in NOISE:
            noisy = data * (1 + rng.uniform(-eps, eps, data.shape)).astype(np.float32)
            variants[f"fp32, input x (1 + U(-{eps:g}, {eps:g}))"] = (nib.Nifti1Image(noisy, image.affine), None)
        variants.update({name: (image, pattern) for name, pattern in PLACEMENTS.items()})
        for name, (img, pattern) in variants.items():
            rows = compare(reference, run(args.models, methods, args.threads, img, pattern))
            cells = " | ".join(f"{100 * a:.2f} % | {100 * w:.2f} % ({s})" for a, w, s in rows.values())
            print(f"| {name} | {path.name.split('.')[0]} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
