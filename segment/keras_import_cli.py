"""``morpho models import-keras``: official SynthSeg / SynthSeg+ Keras HDF5 files -> model bundle."""

from __future__ import annotations

import argparse

KIND_CHOICES = ("robust", "synthseg", "parc", "qc")  # the kinds of segment.keras_import.KINDS


def register(models_subparsers) -> None:
    """Add ``import-keras`` to the ``morpho models`` subcommands."""
    p = models_subparsers.add_parser(
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
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from segment.keras_import import import_keras
    from segment.methods import supported_methods

    bundle = import_keras(args.files, args.output, args.kind, args.model_id)
    for record in bundle.provenance["files"]:
        print(f"{record['file']}: {record['layout']}, {'+'.join(record['kinds'])} -> "
              f"{', '.join(record['roles'])} (sha256 {record['sha256'][:12]}...)")
    methods = supported_methods(set(bundle.networks)) or ["none"]
    extras = [flag for flag, role in (("--parc", "parc"), ("--qc", "qc")) if role in bundle.networks]
    print(f"bundle {bundle.model_id} written to {bundle.root}; methods: {', '.join(methods)}"
          + (f"; options: {' '.join(extras)}" if extras else ""))
    return 0
