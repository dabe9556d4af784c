"""``morpho segment`` and ``morpho merge``."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from morphometry.cli import cluster_options
from morphometry.segment.methods import DEFAULT_METHOD, METHODS
from morphometry.segment.models import STARTER_BUNDLE as DEFAULT_BUNDLE

# settings of the Segmenter and of segment_many -> the flags that set them
FLAGS = {"models": "--models", "methods": "--method", "device": "--device", "threads": "--threads",
         "workers": "--workers", "precision": "--precision", "engine": "--engine", "slab": "--slab",
         "head_window": "--head-window", "parc": "--parc", "qc": "--qc", "full_cleanup": "--full-cleanup",
         "fast": "--fast", "parcel_reference": "--parcel-reference", "resume": "--resume", "shard": "--shard",
         "volumes_format": "--volumes-format", "series_filter": "--series-filter", "ct": "--ct",
         "keep_identifiers": "--keep-identifiers", "id_key": "--id-key"}


def register(sub) -> None:
    p = sub.add_parser(
        "segment", help="segment scans with SynthSeg+ (and variants) into a volumes table",
        description="Segment brain MRI scans of any contrast, resolution and orientation. Writes "
                    "OUT/seg/<scan_id>_<method>.nii.gz, OUT/volumes.parquet and .csv, OUT/failures.csv "
                    "and OUT/provenance.json; with DICOM inputs also OUT/converted/<scan_id>.nii.gz, OUT/skipped.csv "
                    "(series left out, with reasons) and OUT/covariates.csv (age, sex for morpho fit-ageing). "
                    "Exit code 0 when every scan succeeded, 1 otherwise; 143 (130) when SIGTERM (Ctrl-C) "
                    "stopped the batch early (rerun with --resume); 2 on an error, e.g. the output folder in use by "
                    "another batch or no space left on its device.")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image files (.nii, .nii.gz, .mgz), folders (searched recursively; BIDS sub-*/ses-* "
                        "give subject and session; DICOM files of any name: one scan per usable series), zip "
                        "archives of DICOM files, or manifest CSVs (column path: an image or a DICOM series "
                        "folder; optional scan_id, subject_id, session_id; other columns are kept)")
    p.add_argument("-o", "--out", required=True, type=Path, help="output folder")
    p.add_argument("--method", action="append", choices=tuple(METHODS),
                   help="method to run; repeat for several (default: synthseg+)")
    p.add_argument("--models", type=Path, default=None,
                   help=f"model bundle folder (default: the starter bundle shipped in {DEFAULT_BUNDLE})")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="execution device (default: auto = CUDA when available)")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads for the networks (default: 0 = all cores)")
    p.add_argument("--workers", type=int, default=2,
                   help="threads that load/preprocess and postprocess/write around inference (default: 2)")
    p.add_argument("--engine", choices=("auto", "onnxruntime", "openvino"), default="auto",
                   help="inference engine (default: auto = ONNX Runtime on a GPU, OpenVINO on the CPU when "
                        "installed, else ONNX Runtime)")
    p.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default=None,
                   help="network arithmetic: fp32 (default), fp16 (CUDA only) or bf16 (CPUs with AVX512-BF16 or "
                        "AMX, engine openvino; hard labels agree with fp32 on >= 99.5 %% of voxels, see README)")
    p.add_argument("--fp16", action="store_true", help="same as --precision fp16")
    p.add_argument("--slab", type=int, default=None, metavar="ROWS",
                   help="CPU: run the networks' full-resolution levels in slabs of ROWS rows (even; 0 = whole "
                        "graphs): the same results in 0.4-0.5 times the memory (default: 16 with OpenVINO, as fast "
                        "as whole graphs; 0 with ONNX Runtime, where slabs take 1.2 times as long)")
    p.add_argument("--head-window", action="store_true",
                   help="run the networks on the head's bounding box plus 24 mm instead of the whole padded image "
                        "(faster on scans with much air around the head; results differ from the whole-image run, "
                        "see README)")
    p.add_argument("--posteriors", action="store_true",
                   help="also write OUT/posteriors/<scan_id>_<method>.nii.gz (float32, one volume per label)")
    p.add_argument("--resampled", action="store_true",
                   help="also write OUT/resampled/<scan_id>.nii.gz, the image at the working resolution")
    p.add_argument("--parc", action="store_true", help="cortical parcellation (needs a parc network)")
    p.add_argument("--qc", action="store_true", help="automated QC scores (needs a qc network)")
    p.add_argument("--full-cleanup", action="store_true",
                   help="apply the topology clean-up of SynthSeg 2.0 to every method, for fair comparisons "
                        "(default: each method is postprocessed as the original does)")
    p.add_argument("--fast", action="store_true",
                   help="mri_synthseg --fast for every method: the fast postprocessing (no topology clean-up) and "
                        "no left-right flip averaging")
    p.add_argument("--parcel-reference", choices=("white_matter", "cortex"), default="white_matter",
                   help="with --parc, what the parcel volumes are rescaled to sum to: the cerebral white matter "
                        "(labels 2 + 41, as mri_synthseg's files) or the cerebral cortex (3 + 42, what it meant) "
                        "(default: white_matter)")
    p.add_argument("--volumes-format", choices=("tidy", "synthseg"), default="tidy",
                   help="synthseg: also write OUT/volumes_synthseg.csv (and with --qc OUT/qc_synthseg.csv) in "
                        "mri_synthseg's layout, one row per scan in path order (several methods: one file per "
                        "method, volumes_synthseg_<method>.csv) (default: tidy, the tables only)")
    p.add_argument("--resume", action="store_true",
                   help="continue a batch in OUT: skip scans already finished, retry failed ones")
    p.add_argument("--shard", default=None, metavar="K/N",
                   help="process only shard K of N (deterministic by scan_id), for array jobs; "
                        "combine shard folders with morpho merge")
    p.add_argument("--series-filter", default=None, metavar="EXPR",
                   help="DICOM: segment only series whose tags match, e.g. \"SeriesDescription ~ mprage|t1 and "
                        "SliceThickness <= 1.5\" (conditions Keyword OP value joined by 'and'; OP: ~ !~ regular "
                        "expression, = != text, < <= > >= numbers) (default: every usable series)")
    p.add_argument("--ct", action="store_true",
                   help="CT: keep DICOM CT series (left out otherwise) and clip every scan's intensities to "
                        "[0, 80] Hounsfield units before normalising, as mri_synthseg --ct")
    p.add_argument("--keep-identifiers", action="store_true",
                   help="DICOM: also write patient name and ID, birth date, accession number, institution and UIDs "
                        "in clear into the volumes table (default: only keyed pseudonyms)")
    p.add_argument("--id-key", type=Path, default=None, metavar="FILE",
                   help="DICOM: key file of the pseudonymous scan, subject and session ids, created on first use; "
                        "keep it to get the same ids in later runs and to re-identify "
                        "(default: ~/.config/morphometry/project.key)")
    cluster_options.add_arguments(p, local="one per GPU, else as many as the cores (one per --threads "
                                  "cores; without --threads one) and the free memory allow")
    p.set_defaults(func=run_segment, flags={**FLAGS, **cluster_options.FLAGS})

    m = sub.add_parser("merge", help="combine the outputs of several segment folders (shards) into one table",
                       description="Merge the journals of segment output folders into OUT/volumes.parquet, "
                                   "volumes.csv and failures.csv (one row per scan and method, no duplicates).")
    m.add_argument("sources", nargs="+", type=Path, metavar="DIR", help="segment output folders")
    m.add_argument("-o", "--out", required=True, type=Path, help="folder for the merged tables")
    m.set_defaults(func=run_merge)


def run_segment(args: argparse.Namespace) -> int:
    from morphometry.progress import log
    from morphometry.segment.segmenter import Segmenter

    cluster = cluster_options.spec_from_args(args)
    segmenter = Segmenter(args.models or "starter", args.method or (DEFAULT_METHOD,), args.device, args.threads,
                          precision=_precision(args), engine=args.engine, slab=args.slab,
                          head_window=args.head_window,
                          parc=args.parc, qc=args.qc, full_cleanup=args.full_cleanup, fast=args.fast,
                          parcel_reference=args.parcel_reference, workers=args.workers, ct=args.ct)
    result = segmenter.segment_many(args.inputs, args.out, resume=args.resume, shard=args.shard,
                                    progress=args.verbosity >= 0, posteriors=args.posteriors,
                                    resampled=args.resampled, volumes_format=args.volumes_format,
                                    series_filter=args.series_filter, keep_identifiers=args.keep_identifiers,
                                    id_key=args.id_key, cluster=cluster,
                                    command=["morpho", *sys.argv[1:]])
    failures = len(result.failures)
    if result.interrupted:
        left = result.total - result.succeeded - result.failed
        print(f"morpho segment: stopped by {result.interrupted} with {left} scan(s) left; tables written for the "
              f"{len(result.volumes)} row(s) finished; rerun with --resume to finish", file=sys.stderr)
        return 128 + signal.Signals[result.interrupted].value
    log.info(f"done: {result.succeeded} segmented, {result.failed} failed, {result.skipped} skipped; "
             f"{len(result.volumes)} rows in {args.out / 'volumes.parquet'}"
             + (f"; {failures} failure(s) listed in {args.out / 'failures.csv'}" if failures else ""))
    return 0 if result.ok else 1


def _precision(args: argparse.Namespace) -> str:
    if args.fp16 and args.precision not in (None, "fp16"):
        from morphometry.errors import InputError

        raise InputError(f"--fp16 contradicts --precision {args.precision}")
    return "fp16" if args.fp16 else args.precision or "fp32"


def run_merge(args: argparse.Namespace) -> int:
    from morphometry.progress import log
    from morphometry.segment.segmenter import merge

    merged = merge(args.sources, args.out)
    log.info(f"merged {len(args.sources)} folder(s): {len(merged.volumes)} rows, {len(merged.failures)} failure(s) "
             f"-> {args.out}")
    return 0
