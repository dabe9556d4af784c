"""``morpho segment`` and ``morpho merge``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from morphometry.segment.methods import METHODS
from morphometry.segment.models import STARTER_BUNDLE as DEFAULT_BUNDLE


def register(sub) -> None:
    p = sub.add_parser(
        "segment", help="segment scans with SynthSeg+ (and variants) into a volumes table",
        description="Segment brain MRI scans of any contrast, resolution and orientation. Writes "
                    "OUT/seg/<scan_id>_<method>.nii.gz, OUT/volumes.parquet and .csv, OUT/failures.csv "
                    "and OUT/provenance.json. Exit code 0 when every scan succeeded, 1 otherwise.")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image files (.nii, .nii.gz, .mgz), folders (searched recursively; BIDS sub-*/ses-* "
                        "give subject and session) or manifest CSVs (column path; optional scan_id, "
                        "subject_id, session_id; other columns are kept)")
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
    p.add_argument("--fp16", action="store_true", help="run the networks in float16 (CUDA only)")
    p.add_argument("--posteriors", action="store_true",
                   help="also write OUT/posteriors/<scan_id>_<method>.nii.gz (float32, one volume per label)")
    p.add_argument("--resampled", action="store_true",
                   help="also write OUT/resampled/<scan_id>.nii.gz, the image at the working resolution")
    p.add_argument("--parc", action="store_true", help="cortical parcellation (needs a parc network)")
    p.add_argument("--qc", action="store_true", help="automated QC scores (needs a qc network)")
    p.add_argument("--full-cleanup", action="store_true",
                   help="apply the topology clean-up of SynthSeg 2.0 to every method, for fair comparisons "
                        "(default: each method is postprocessed as the original does)")
    p.add_argument("--resume", action="store_true",
                   help="continue a batch in OUT: skip scans already finished, retry failed ones")
    p.add_argument("--shard", default=None, metavar="K/N",
                   help="process only shard K of N (deterministic by scan_id), for array jobs; "
                        "combine shard folders with morpho merge")
    p.set_defaults(func=run_segment)

    m = sub.add_parser("merge", help="combine the outputs of several segment folders (shards) into one table",
                       description="Merge the journals of segment output folders into OUT/volumes.parquet, "
                                   "volumes.csv and failures.csv (one row per scan and method, no duplicates).")
    m.add_argument("sources", nargs="+", type=Path, metavar="DIR", help="segment output folders")
    m.add_argument("-o", "--out", required=True, type=Path, help="folder for the merged tables")
    m.set_defaults(func=run_merge)


def run_segment(args: argparse.Namespace) -> int:
    from datetime import datetime, timezone

    from morphometry.errors import InputError, ModelError
    from morphometry.inputs import discover
    from morphometry.segment import journal
    from morphometry.segment.batch import (Outputs, SegmentBatch, Shard, merge_outputs, provenance, remove_partial_writes,
                               write_provenance)
    from morphometry.segment.bundle import load_bundle, verify_bundle
    from morphometry.segment.methods import resolve_methods
    from morphometry.segment.runtime import Engine, RuntimeConfig

    started = datetime.now(timezone.utc)
    methods = resolve_methods(args.method)
    bundle_dir = args.models or DEFAULT_BUNDLE
    if args.models is None and not (DEFAULT_BUNDLE / "bundle.json").is_file():
        raise ModelError(f"no starter bundle in {DEFAULT_BUNDLE}; pass --models BUNDLE "
                         "(e.g. one made by morpho models import-keras)")
    bundle = load_bundle(bundle_dir)
    roles = {r for m in methods for r in m.roles} | ({"parc"} if args.parc else set()) | ({"qc"} if args.qc else set())
    problems = verify_bundle(bundle, tuple(roles & set(bundle.networks)))
    if problems:
        raise ModelError(f"{bundle.root}: bundle failed verification: {'; '.join(problems)}")
    records = discover(args.inputs)
    if args.shard:
        shard = Shard.parse(args.shard)
        records = [r for r in records if shard.holds(r.scan_id)]
    out = args.out
    done = journal.finished(out, [m.name for m in methods])
    if journal.entries(out) and not args.resume:
        raise InputError(f"{out} already holds results of an earlier batch; pass --resume to continue it "
                         "or choose another output folder")
    todo = [r for r in records if r.scan_id not in done]
    remove_partial_writes(out)
    engine = Engine(bundle, methods, RuntimeConfig(device=args.device, threads=args.threads, fp16=args.fp16),
                    parc=args.parc, qc=args.qc)
    outputs = Outputs(posteriors=args.posteriors, resampled=args.resampled, parc=args.parc, qc=args.qc,
                      full_cleanup=args.full_cleanup)
    batch = SegmentBatch(bundle, methods, engine, out, outputs, workers=args.workers)
    print(f"segmenting {len(todo)} scan(s) with {', '.join(m.name for m in methods)} on {engine.device}"
          + (f" ({len(records) - len(todo)} already done)" if len(todo) < len(records) else ""), file=sys.stderr)
    with _progress(len(todo)) as bar:
        result = batch.run(todo, bar)
    result.skipped = len(records) - len(todo)
    rows, failures = merge_outputs(out, metadata={"model_id": bundle.model_id})
    write_provenance(out, provenance(bundle, engine, sys.argv[1:], result, started))
    print(f"done: {result.succeeded} segmented, {result.failed} failed, {result.skipped} skipped; "
          f"{rows} rows in {out / 'volumes.parquet'}"
          + (f"; {failures} failure(s) listed in {out / 'failures.csv'}" if failures else ""), file=sys.stderr)
    return 0 if failures == 0 else 1


def _progress(total: int):
    from tqdm import tqdm

    return tqdm(total=total, unit="scan", file=sys.stderr, disable=not sys.stderr.isatty(), dynamic_ncols=True)


def run_merge(args: argparse.Namespace) -> int:
    from morphometry.errors import InputError
    from morphometry.segment import journal
    from morphometry.segment.batch import merge_outputs

    for src in args.sources:
        if not journal.entries(src):
            raise InputError(f"{src}: no segment results found (no {journal.JOURNAL_DIR}/ entries)")
    rows, failures = merge_outputs(args.out, args.sources)
    print(f"merged {len(args.sources)} folder(s): {rows} rows, {failures} failure(s) -> {args.out}", file=sys.stderr)
    return 0
