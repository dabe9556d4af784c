"""``morpho train``: argument parsing only; PyTorch is imported when a command runs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

NETWORKS = {"s1": "s1", "d": "d", "s2": "s2", "synthseg": "synthseg", "d-all": "d_all"}
HELP = {
    "s1": "S1: image -> 5 tissue groups",
    "d": "D: corrects the one-hot S1 output of degraded images (needs --previous S1_RUN)",
    "s2": "S2: [image, corrupted tissue maps] -> 33 labels",
    "synthseg": "the non-robust SynthSeg 2.0 network: image -> 33 labels",
    "d-all": "D_all: corrects the one-hot SynthSeg output over all 33 labels (needs --previous SYNTHSEG_RUN)",
}
# option -> (TrainConfig field, type, help); defaults come from TrainConfig
OPTIONS = {
    "--label-maps": ("label_maps", str, "folder of training label maps (generation labels, .nii/.nii.gz/.mgz)"),
    "--steps": ("steps", int, "last training step (default: 1000)"),
    "--crop": ("crop", int, "crop per axis in voxels of the working grid (default: 48)"),
    "--width": ("width", int, "features of the first level (default: 8; official 24, D 16)"),
    "--levels": ("levels", int, "U-Net levels (default: 4; official 5)"),
    "--resolution": ("resolution_mm", float, "working resolution in whole mm (default: 2; official 1)"),
    "--seed": ("seed", int, "seed of the weights and of the data order (default: 0)"),
    "--lr": ("lr", float, "Adam learning rate (default: 1e-4)"),
    "--batch-size": ("batch_size", int, "examples per step (default: 1)"),
    "--checkpoint-every": ("checkpoint_every", int, "steps between checkpoints (default: 50)"),
    "--validate-every": ("validate_every", int, "steps between validations (default: 100)"),
    "--validation-examples": ("validation_examples", int, "held-out synthetic examples scored (default: 4)"),
    "--held-out": ("held_out", int, "label maps (last by name) held out for validation (default: 3)"),
    "--brain-margin": ("brain_margin_mm", float,
                       "crops lie in the brain's bounding box plus this margin, mm (default: 20)"),
    "--workers": ("workers", int, "processes that synthesise batches (default: 1; 0 = none)"),
    "--wl2-steps": ("wl2_steps", int, "weighted-L2 warm-up steps before soft Dice (default: 0)"),
    "--bn-momentum": ("bn_momentum", float, "batch-norm running-average momentum (default: 0.01 = Keras 0.99)"),
    "--d-variant": ("d_variant", str, "D/D_all architecture: paper (light) or official (default: paper)"),
    "--d-skips-removed": ("d_skips_removed", int, "D/D_all decoder steps without a skip at the finest levels "
                          "(default: 2, the paper's at 1 mm; 1 keeps the same 4 mm scale at 2 mm)"),
    "--previous": ("previous", str, "run folder of the trained S1 (for d) or SynthSeg (for d-all)"),
    "--d-inputs": ("d_inputs", str, "images whose S1 / SynthSeg outputs D / D_all learn to correct: degraded "
                   "(the paper's wide degradation priors) or generator (the images S1 / SynthSeg trained on; "
                   "default: degraded)"),
    "--init": ("init", str, "run folder (its last weights) or model bundle (its network of this role) that starts this "
              "run (fine-tuning; same network)"),
    "--recalibration-examples": ("recalibration_examples", int, "training examples whose batch statistics "
                                 "replace the batch-norm running averages after the last step (default: 32)"),
}
RESUMABLE = {"steps", "workers"}  # the only settings a resumed run may change
FLAGS = {field: flag for flag, (field, _, _) in OPTIONS.items()} | {"resume": "--resume"}


def register(sub) -> None:
    p = sub.add_parser("train", help="train the segmentation networks by domain randomisation (needs [train])",
                       description="Train S1, D, S2, SynthSeg and D_all on synthetic images generated on the fly "
                                   "from label maps, export runs to a model bundle, evaluate a bundle.")
    tsub = p.add_subparsers(dest="train_command", required=True, metavar="{s1,d,s2,synthseg,d-all,export,evaluate}")
    for name, role in NETWORKS.items():
        q = tsub.add_parser(name, help=HELP[name], description=HELP[name] + ". Writes RUN_DIR/config.json, "
                            "RUN_DIR/checkpoints/ and RUN_DIR/log.csv.")
        q.add_argument("-o", "--out", required=True, type=Path, metavar="RUN_DIR", help="run folder")
        q.add_argument("--resume", action="store_true",
                       help="continue RUN_DIR from its last checkpoint with the same data order "
                            "(settings come from RUN_DIR/config.json; --steps may extend the run)")
        for flag, (_, kind, text) in OPTIONS.items():
            q.add_argument(flag, type=kind, default=None, help=text)
        q.set_defaults(func=run_train, role=role, flags=FLAGS)
    e = tsub.add_parser("export", help="write a model bundle from trained runs (one per role)",
                        description="Convert the last checkpoint of each run to the project's ONNX graphs and "
                                    "write one bundle with the model card in bundle.json.")
    e.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR")
    e.add_argument("-o", "--out", required=True, type=Path, metavar="BUNDLE", help="bundle folder")
    e.add_argument("--model-id", default=None, help="bundle id (default: the folder name)")
    e.add_argument("--evaluation", type=Path, default=None, help="JSON from `morpho train evaluate` for the model card")
    e.add_argument("--description", default="", help="one-line description for bundle.json")
    e.set_defaults(func=run_export)
    v = tsub.add_parser("evaluate", help="Dice of every method of a bundle on held-out synthetic scans",
                        description="Render held-out label maps as T1-like, T2-like, random-contrast and "
                                    "low-SNR scans at 1, 3, 6 and 9 mm slice spacing, segment them with every "
                                    "method the bundle supports and write Dice per structure (JSON).")
    v.add_argument("bundle", type=Path)
    v.add_argument("--label-maps", required=True, type=Path, help="folder of label maps")
    v.add_argument("--held-out", type=int, default=3, help="the last N maps by name are evaluated (default: 3)")
    v.add_argument("--seed", type=int, default=0, help="seed of the synthetic scans (default: 0)")
    v.add_argument("-o", "--out", required=True, type=Path, help="output JSON")
    v.set_defaults(func=run_evaluate)


def _torch_or_error():
    from morphometry.errors import InputError

    try:
        import torch  # noqa: F401
    except ImportError:
        raise InputError("morpho train needs PyTorch: pip install 'morphometry-mri[train]'") from None


def run_train(args: argparse.Namespace) -> int:
    _torch_or_error()
    from dataclasses import replace

    from morphometry.errors import InputError
    from morphometry.segment.training.runs import TrainConfig, load_config
    from morphometry.segment.training.train import train

    given = {field: getattr(args, flag[2:].replace("-", "_")) for flag, (field, _, _) in OPTIONS.items()}
    given = {k: v for k, v in given.items() if v is not None}
    if args.resume:
        config = load_config(args.out)
        if config.role != args.role:
            raise InputError(f"{args.out}: a {config.role} run, cannot resume it as {args.role}")
        changed = sorted(set(given) - RESUMABLE)
        if changed:
            raise InputError(f"--resume keeps the run's settings; only --steps and --workers may be given "
                             f"(got {', '.join(changed)})")
        config = replace(config, **given)
    else:
        if "label_maps" not in given:
            raise InputError("--label-maps is required (folder of training label maps)")
        config = TrainConfig(role=args.role, **given)
    last = train(config, args.out, resume=args.resume)
    print(f"last checkpoint: {last}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    _torch_or_error()
    from morphometry.segment.bundle import verify_bundle
    from morphometry.segment.training.export import export_bundle, read_evaluation

    evaluation = read_evaluation(args.evaluation) if args.evaluation else None
    bundle = export_bundle(args.runs, args.out, args.model_id or args.out.name, evaluation, args.description)
    problems = verify_bundle(bundle)
    for problem in problems:
        print(f"problem: {problem}")
    print(f"bundle {bundle.model_id} with {', '.join(bundle.networks)} written to {bundle.root}")
    return 1 if problems else 0


def run_evaluate(args: argparse.Namespace) -> int:
    from morphometry.segment.bundle import load_bundle
    from morphometry.segment.training.evaluate import (
        EvaluationConfig,
        evaluate_bundle,
        structure_table,
        summary_table,
    )

    bundle = load_bundle(args.bundle)
    result = evaluate_bundle(bundle, args.label_maps, EvaluationConfig(held_out=args.held_out, seed=args.seed))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(summary_table(result))
    print()
    print(structure_table(result))
    return 0
