"""``morpho models``: list, show and verify model bundles; import the official Keras weights (files,
or all those of ``$FREESURFER_HOME/models`` at once)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

KIND_CHOICES = ("robust", "synthseg", "parc", "qc")  # the kinds of morphometry.segment.keras_import.KINDS


def register(sub) -> None:
    models = sub.add_parser("models", help="list, show and verify model bundles")
    msub = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    ls = msub.add_parser("list", help="bundles shipped with the package, in $MORPHO_MODELS and in the user's "
                                      "models folder")
    ls.set_defaults(func=run_models_list)
    show = msub.add_parser("show", help="networks, labels, resolution and provenance of a bundle")
    show.add_argument("bundle", type=Path)
    show.set_defaults(func=run_models_show)
    verify = msub.add_parser("verify", help="check files, hashes, shapes and label lists of a bundle")
    verify.add_argument("bundle", type=Path)
    verify.set_defaults(func=run_models_verify)
    _register_import(msub)
    _register_import_freesurfer(msub)


def _register_import(msub) -> None:
    p = msub.add_parser(
        "import-keras",
        help="convert SynthSeg/SynthSeg+ Keras .h5 weights into a model bundle",
        description="Convert the Keras HDF5 weight files of SynthSeg (synthseg_1.0.h5, synthseg_2.0.h5), "
                    "SynthSeg+ (synthseg_robust_2.0.h5), the cortical parcellation (synthseg_parc_2.0.h5) "
                    "and the QC regressor (synthseg_qc_2.0.h5) into one ONNX model bundle for "
                    "`morpho segment --models`. Reads weights-only and full-model files with h5py; "
                    "TensorFlow is not needed. The architecture is inferred from layer names and "
                    "weight shapes and checked layer by layer.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("files", nargs="+", metavar="FILE.h5", help="Keras HDF5 files (weights-only or full model)")
    p.add_argument("-o", "--output", required=True, metavar="BUNDLE_DIR",
                   help="new bundle folder (must not already hold a bundle)")
    p.add_argument("--kind", action="append", choices=KIND_CHOICES, default=None,
                   help="network kind to take from the files instead of detecting it from the layer names: "
                        "give it once for all files or once per file, in file order "
                        "(default: every kind each file holds)")
    p.add_argument("--model-id", default=None,
                   help="bundle identifier recorded in bundle.json and in volume tables "
                        "(default: keras-<kinds>-<hash of the source files>)")
    p.set_defaults(func=run_import)


def _register_import_freesurfer(msub) -> None:
    p = msub.add_parser(
        "import-freesurfer",
        help="import the SynthSeg weights FreeSurfer ships ($FREESURFER_HOME/models) for morpho synthseg",
        description="Import the official SynthSeg networks that FreeSurfer 7.3 and later ship in "
                    "$FREESURFER_HOME/models, all at once: synthseg_2.0.h5, synthseg_robust_2.0.h5, "
                    "synthseg_parc_2.0.h5 and synthseg_qc_2.0.h5 into one bundle, and synthseg_1.0.h5 (when "
                    "present) with the parcellation and QC networks into a second bundle named <BUNDLE>-v1. "
                    "morpho synthseg finds them there without --models; morpho segment takes them with "
                    "--models BUNDLE. Needs neither TensorFlow nor FreeSurfer's Python.")
    p.add_argument("--freesurfer-home", type=Path, default=None, metavar="DIR",
                   help="the FreeSurfer folder (default: $FREESURFER_HOME)")
    p.add_argument("-o", "--output", type=Path, default=None, metavar="BUNDLE_DIR",
                   help="bundle folder to create (default: freesurfer in the first folder of $MORPHO_MODELS, "
                        "else in $XDG_DATA_HOME/morphometry/models, i.e. ~/.local/share/morphometry/models); "
                        "morpho synthseg looks for freesurfer/ in $MORPHO_MODELS and that folder")
    p.add_argument("--model-id", default=None,
                   help="bundle identifier recorded in bundle.json and in volume tables "
                        "(default: freesurfer-<version from $FREESURFER_HOME/build-stamp.txt>; -v1 for SynthSeg 1.0)")
    p.set_defaults(func=run_import_freesurfer,
                   flags={"freesurfer_home": "--freesurfer-home", "out": "--output", "model_id": "--model-id"})


def run_import_freesurfer(args: argparse.Namespace) -> int:
    from morphometry.segment.freesurfer_import import import_freesurfer
    from morphometry.segment.methods import supported_methods

    done = import_freesurfer(args.freesurfer_home, args.output, args.model_id)
    for bundle in (done.bundle, done.v1):
        if bundle is not None:
            files = ", ".join(record["file"] for record in bundle.provenance["files"])
            print(f"bundle {bundle.model_id} written to {bundle.root} from {files}; methods: "
                  f"{', '.join(supported_methods(set(bundle.networks))) or 'none'}")
    if done.missing:
        print(f"not found (not imported): {', '.join(done.missing)}")
    return 0


def run_import(args: argparse.Namespace) -> int:
    from morphometry.segment.keras_import import import_keras
    from morphometry.segment.methods import supported_methods

    bundle = import_keras(args.files, args.output, args.kind, args.model_id)
    for record in bundle.provenance["files"]:
        print(f"{record['file']}: {record['layout']}, {'+'.join(record['kinds'])} -> "
              f"{', '.join(record['roles'])} (sha256 {record['sha256'][:12]}...)")
    methods = supported_methods(set(bundle.networks)) or ["none"]
    extras = [flag for flag, role in (("--parc", "parc"), ("--qc", "qc")) if role in bundle.networks]
    print(f"bundle {bundle.model_id} written to {bundle.root}; methods: {', '.join(methods)}"
          + (f"; options: {' '.join(extras)}" if extras else ""))
    return 0


def run_models_list(args: argparse.Namespace) -> int:
    from morphometry.errors import MorphometryError
    from morphometry.segment.bundle import load_bundle
    from morphometry.segment.methods import supported_methods
    from morphometry.segment.models import bundle_dirs

    found = 0
    for folder in bundle_dirs():
        for meta in sorted(Path(folder).glob("*/bundle.json")) if Path(folder).is_dir() else []:
            try:
                b = load_bundle(meta.parent)
            except MorphometryError as exc:
                print(f"{meta.parent}\tunreadable: {exc}")
                continue
            found += 1
            print(f"{b.model_id}\t{b.root}\tnetworks: {', '.join(b.networks)}\t"
                  f"methods: {', '.join(supported_methods(set(b.networks))) or 'none'}")
    if not found:
        print("no bundles found (looked in: " + ", ".join(map(str, bundle_dirs())) + ")", file=sys.stderr)
    return 0


def run_models_show(args: argparse.Namespace) -> int:
    from morphometry.segment.bundle import load_bundle
    from morphometry.segment.methods import supported_methods

    b = load_bundle(args.bundle)
    print(f"model_id: {b.model_id}\npath: {b.root}\nresolution: {b.resolution_mm} mm\n"
          f"normalisation: {b.normalisation}\nlicence: {b.licence}\n"
          f"methods: {', '.join(supported_methods(set(b.networks))) or 'none'}")
    for role, net in b.networks.items():
        print(f"  {role}: {net.file}  in={len(net.input_channels)} out={len(net.labels)}  sha256={net.sha256[:16]}…")
    print("provenance: " + json.dumps(b.provenance, indent=1))
    return 0


def run_models_verify(args: argparse.Namespace) -> int:
    from morphometry.segment.bundle import load_bundle, verify_bundle

    b = load_bundle(args.bundle)
    problems = verify_bundle(b)
    for p in problems:
        print(f"{b.root}: {p}", file=sys.stderr)
    print(f"{b.root}: {'OK' if not problems else f'{len(problems)} problem(s)'} ({len(b.networks)} networks)")
    return 0 if not problems else 1
