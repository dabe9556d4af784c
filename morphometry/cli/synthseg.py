"""``morpho synthseg``: ``mri_synthseg``'s command line, flag for flag, on the engine of ``morpho segment``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# settings of plan_outputs, of the Segmenter and of the import -> the flags that set them
FLAGS = {"inputs": "--i", "segmentations": "--o", "posteriors": "--post", "resampled": "--resample",
         "volumes": "--vol", "qc": "--qc", "parc": "--parc", "fast": "--fast", "crop": "--crop", "ct": "--ct",
         "threads": "--threads", "device": "--cpu", "models": "--models", "methods": "--models", "v1": "--v1",
         "robust": "--robust"}

DESCRIPTION = """\
Segment brain MRI scans as FreeSurfer's mri_synthseg does, with the same flags and the same files:
<name>_synthseg.nii.gz segmentations (and _posteriors, _resampled), the --vol and --qc CSV files in
the original's layout. The networks are the official ones imported with `morpho models
import-freesurfer` (found without --models), or any bundle given with --models.

What differs from mri_synthseg: the engine is that of `morpho segment`. One process segments a
whole folder or list with the networks started once, on all CPU cores by default (or the GPU).
A scan that fails (unreadable file, odd header) is reported and the others go on; the exit code
is then 1. A run keeps its state in .morpho-synthseg/ inside --o (or beside the --o file or
list): running the same command again resumes, without segmenting again the scans already done,
and retries the failed ones. That folder also holds the full volumes table (volumes.parquet/.csv
with every column of `morpho segment`), failures.csv and provenance.json; delete it to start
over. .npz inputs are not read.
"""


def register(sub) -> None:
    p = sub.add_parser("synthseg", help="mri_synthseg's flags and files (drop-in), on the engine of morpho segment",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--i", required=True, metavar="INPUT",
                   help="an image (.nii.gz, .nii, .mgz), a folder of images (not searched recursively), or a .txt "
                        "file listing images, one path a line")
    p.add_argument("--o", required=True, metavar="OUTPUT",
                   help="segmentation(s): for an image, a file or a folder; for a folder, a folder "
                        "(<name>_synthseg<ext> each); for a .txt list, a .txt list of output paths")
    p.add_argument("--parc", action="store_true", help="cortical parcellation (68 parcels in the cortex)")
    p.add_argument("--robust", action="store_true",
                   help="SynthSeg+ (S1 -> D -> S2), robust to low-quality scans; implies the fast postprocessing")
    p.add_argument("--fast", action="store_true",
                   help="no left-right flip averaging and the fast postprocessing (no topology clean-up)")
    p.add_argument("--vol", default=None, metavar="CSV",
                   help="volumes in mm^3 of every structure (and parcel): a CSV file (.txt list for .txt inputs)")
    p.add_argument("--qc", default=None, metavar="CSV",
                   help="automated QC scores: a CSV file (.txt list for .txt inputs)")
    p.add_argument("--post", default=None, metavar="PATH",
                   help="posteriors (float32, one volume per label), paired with the inputs like --o")
    p.add_argument("--resample", default=None, metavar="PATH",
                   help="the image resampled to 1 mm, paired with the inputs like --o; written only for the "
                        "images that are resampled")
    p.add_argument("--crop", type=int, nargs="+", default=None, metavar="N",
                   help="analyse only a centred box of 1 or 3 sizes in mm (rounded up to multiples of 32); the "
                        "rest is background (default: the whole image)")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads of the networks (default: 0 = all cores; mri_synthseg's default is 1)")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is usable")
    p.add_argument("--v1", action="store_true",
                   help="SynthSeg 1.0 (no CSF label; its bundle: freesurfer-v1, from synthseg_1.0.h5)")
    p.add_argument("--ct", action="store_true", help="CT scan: intensities clipped to [0, 80] before normalising")
    p.add_argument("--models", type=Path, default=None, metavar="BUNDLE",
                   help="model bundle folder (default: the official networks imported with `morpho models "
                        "import-freesurfer`: freesurfer/ or, with --v1, freesurfer-v1/ in $MORPHO_MODELS or "
                        "~/.local/share/morphometry/models)")
    p.set_defaults(func=run_synthseg, flags=FLAGS)


def run_synthseg(args: argparse.Namespace) -> int:
    from morphometry.errors import InputError
    from morphometry.progress import log
    from morphometry.segment.bundle import load_bundle
    from morphometry.segment.segmenter import Segmenter, synthseg_version
    from morphometry.segment.synthseg_files import plan_outputs
    from morphometry.segment.synthseg_run import run_synthseg as run
    from morphometry.segment.synthseg_tables import original_reference

    if args.robust and args.v1:
        raise InputError("SynthSeg 1.0 has no robust version; drop --robust or --v1", setting="v1")
    if args.crop is not None and len(args.crop) not in (1, 3):
        raise InputError(f"give 1 or 3 sizes, not {len(args.crop)}", setting="crop")
    plan = plan_outputs(args.i, args.o, args.post, args.resample, args.vol, args.qc)
    method = "synthseg+" if args.robust else "synthseg"
    bundle = load_bundle(_bundle_folder(args.models, args.v1))
    if not args.robust and "synthseg" in bundle.networks and (synthseg_version(bundle, method) == "1.0") != args.v1:
        have = synthseg_version(bundle, method)
        raise InputError(f"{bundle.root} holds a SynthSeg {have} network; "
                         + ("add --v1" if have == "1.0" else "--v1 needs a SynthSeg 1.0 bundle (freesurfer-v1)"),
                         setting="v1")
    segmenter = Segmenter(bundle, method, "cpu" if args.cpu else "auto", args.threads, parc=args.parc,
                          qc=args.qc is not None, fast=args.fast or args.robust,
                          parcel_reference=original_reference(args.v1),
                          crop=None if args.crop is None else tuple(args.crop), ct=args.ct)
    result = run(segmenter, plan, progress=args.verbosity >= 0, command=["morpho", *sys.argv[1:]])
    failed = len(plan.jobs) - len(result.done)
    log.info(f"done: {len(result.done)} of {len(plan.jobs)} scan(s) segmented"
             + (f", {failed} failed (listed in {result.work_dir / 'failures.csv'})" if failed else "")
             + f"; run state in {result.work_dir}")
    return 0 if result.ok else 1


def _bundle_folder(models: Path | None, v1: bool) -> Path:
    from morphometry.errors import ModelError
    from morphometry.segment.models import OFFICIAL_BUNDLE, OFFICIAL_V1_BUNDLE, bundle_dirs, find_official

    if models is not None:
        return models
    found = find_official(v1)
    if found is None:
        name = OFFICIAL_V1_BUNDLE if v1 else OFFICIAL_BUNDLE
        raise ModelError(f"no official SynthSeg networks found ({name}/ in {', '.join(map(str, bundle_dirs()[1:]))}); "
                         "import those of FreeSurfer 7.3+ once with `morpho models import-freesurfer` "
                         "(or give --models BUNDLE)", setting="models")
    return found
