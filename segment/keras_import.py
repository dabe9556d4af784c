"""Import the SynthSeg / SynthSeg+ Keras HDF5 weights into a model bundle (h5py only, no TensorFlow).

Reads both layouts Keras 2 writes (Keras 2.3 ``save_weights`` and ``model.save`` HDF5 layouts): weights-only files (one
group per layer at the root) and full-model files and training checkpoints (the same tree under
``model_weights/``; ``model_config``, ``optimizer_weights`` and layers of other networks are
ignored). Root attributes longer than 64 kB are split by Keras into ``layer_names0``,
``layer_names1``, ...; both spellings are read. Each layer's arrays are taken in the order of its
``weight_names`` attribute, never by guessing dataset paths.

A layer belongs to a network by its full name: network prefix (``unet_parc``, ``unet2``, ``unet``,
``l2l``, ``qc``; prefixes overlap, so the longest that fits wins) plus a suffix of that network's
naming scheme (``ext/neuron/models.py``: ``<prefix>_conv_downarm_<level>_<conv>``, ...). The architecture is inferred from names and shapes: the
number of levels from the first decoder convolution's number, convolutions per level, kernel size,
base width, multiplier and input channels from the first two encoder convolutions, the number of
labels from ``likelihood``, and which skip connections exist from each decoder step's input
channels. Every layer is then checked against the inferred architecture; the first one that does not
fit is named in the error.

Kinds and bundle roles:

| kind | networks (prefix -> role) | labels |
| --- | --- | --- |
| ``robust`` (SynthSeg+) | ``unet`` -> s1, ``l2l`` -> d, ``unet2`` -> s2 | 5 tissue groups; 33 labels |
| ``synthseg`` (1.0 / 2.0) | ``unet`` -> synthseg | 32 (1.0) or 33 (2.0) labels |
| ``parc`` | ``unet_parc`` -> parc | 0 and the 68 cortical parcels |
| ``qc`` | ``qc`` -> qc | 9 QC groups |

SynthSeg 1.0 has no CSF channel. Its network is imported with its own 32 softmax channels and a
constant channel inserted at the CSF position (label 24): posterior 0 and logit equal to the lowest
float32, so the bundle keeps the 33-label interface every stage expects and CSF never wins the
argmax. Its segmentation, smoothing and flip averaging then equal the original's 32 channels.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx

from morphometry.errors import InputError, ModelError
from morphometry.labels import PARCELLATION_LABELS, SYNTHSEG_1, SYNTHSEG_2
from morphometry.segment.bundle import TISSUE_LABELS, Bundle, file_sha256, verify_bundle, write_bundle
from morphometry.segment.networks import GraphBuilder, UNetSpec, Weights, add_unet, make_model, unet_model
from morphometry.segment.qcnet import QCSpec, qc_model

PREFIXES = ("unet_parc", "unet2", "unet", "l2l", "qc")  # longest first: "unet_parc_x" also starts with "unet_"
KINDS = {
    "robust": {"unet": "s1", "l2l": "d", "unet2": "s2"},
    "synthseg": {"unet": "synthseg"},
    "parc": {"unet_parc": "parc"},
    "qc": {"qc": "qc"},
}
UNET_LAYER = re.compile(r"conv_downarm_\d+_\d+|conv_uparm_\d+_\d+|bn_down_\d+|bn_up_\d+|likelihood")
QC_LAYER = re.compile(r"conv_downarm_\d+_\d+|expand_down_merge_\d+|bn_down_\d+|final_conv_\d+")
PARC_LABELS = [0] + [p.value for p in PARCELLATION_LABELS]
QC_LABELS = list(range(9))
# role -> (input channels, accepted output label lists)
ROLE_INTERFACE = {
    "s1": (1, (TISSUE_LABELS,)),
    "d": (5, (TISSUE_LABELS,)),
    "s2": (6, (SYNTHSEG_2.values.tolist(),)),
    "synthseg": (1, (SYNTHSEG_2.values.tolist(), SYNTHSEG_1.values.tolist())),
    "parc": (3, (PARC_LABELS,)),
    "qc": (9, (QC_LABELS,)),
}
LICENCE = ("as distributed with the imported files (SynthSeg repository: Apache-2.0; copies shipped with "
           "FreeSurfer: the FreeSurfer licence)")


@dataclass(frozen=True)
class KerasFile:
    """The weighted layers of the SynthSeg networks in one Keras HDF5 file."""

    path: Path
    sha256: str
    layout: str  # "weights-only" | "full-model"
    keras_version: str
    networks: dict[str, Weights]  # prefix -> {layer suffix -> arrays in weight_names order}, file order


@dataclass(frozen=True)
class ImportedNetwork:
    """One network converted to ONNX, with what the bundle records about it."""

    role: str
    model: onnx.ModelProto
    labels: list[int]
    architecture: dict


def network_of(layer: str) -> tuple[str, str] | None:
    """(prefix, suffix) of a SynthSeg layer name, or None for layers of no known network."""
    for prefix in PREFIXES:
        if layer.startswith(prefix + "_"):
            return prefix, layer[len(prefix) + 1:]
    return None


def _strings(attrs, name: str) -> list[str] | None:
    """A list-of-strings attribute, joining the chunks ``name0``, ``name1``, ... Keras writes for long
    lists; None when absent."""
    if name in attrs:
        values = list(np.atleast_1d(attrs[name]))
    elif f"{name}0" in attrs:
        values, i = [], 0
        while f"{name}{i}" in attrs:
            values += list(np.atleast_1d(attrs[f"{name}{i}"]))
            i += 1
    else:
        return None
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


def read_keras_h5(path: str | Path) -> KerasFile:
    """Read the SynthSeg layers of a Keras HDF5 file; InputError for unreadable files, ModelError
    for a broken layer tree."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        fh = h5py.File(path, "r")
    except OSError as exc:
        raise InputError(f"{path}: not an HDF5 file ({exc})") from None
    with fh:
        full = isinstance(fh.get("model_weights"), h5py.Group)
        root = fh["model_weights"] if full else fh
        layer_names = _strings(root.attrs, "layer_names")
        if layer_names is None:
            raise InputError(f"{path}: not a Keras 2 HDF5 weights file (no layer_names attribute at "
                             f"{'/model_weights' if full else 'the root'})")
        networks: dict[str, Weights] = {}
        for layer in layer_names:
            owner = network_of(layer)
            if owner is None:
                continue
            if not isinstance(root.get(layer), h5py.Group):
                raise ModelError(f"{path}: layer {layer} is listed in layer_names but has no group")
            group = root[layer]
            weight_names = _strings(group.attrs, "weight_names") or []
            arrays = []
            for weight in weight_names:
                if not isinstance(group.get(weight), h5py.Dataset):
                    raise ModelError(f"{path}: layer {layer}: weight {weight} is listed but missing")
                arrays.append(np.asarray(group[weight], dtype=np.float32))
            if arrays:
                networks.setdefault(owner[0], {})[owner[1]] = tuple(arrays)
        version = fh.attrs.get("keras_version", root.attrs.get("keras_version", b"unknown"))
    version = version.decode() if isinstance(version, bytes) else str(version)
    return KerasFile(path, file_sha256(path), "full-model" if full else "weights-only", version, networks)


def detect_kinds(kf: KerasFile) -> list[str]:
    """Kinds whose networks the file holds (a robust file's ``unet`` is S1, not a synthseg net)."""
    present = set(kf.networks)
    kinds = []
    if present & {"l2l", "unet2"}:
        kinds.append("robust")
    elif "unet" in present:
        kinds.append("synthseg")
    kinds += [kind for kind in ("parc", "qc") if next(iter(KINDS[kind])) in present]
    if not kinds:
        raise ModelError(f"{kf.path}: no SynthSeg network layers found (expected layer names starting "
                         f"with {', '.join(p + '_' for p in PREFIXES)})")
    return kinds


def _conv_shape(kf: KerasFile, prefix: str, suffix: str) -> tuple[int, ...]:
    arrays = kf.networks[prefix].get(suffix)
    if arrays is None:
        raise ModelError(f"{kf.path}: layer {prefix}_{suffix}: missing")
    if len(arrays) != 2 or arrays[0].ndim != 5:
        raise ModelError(f"{kf.path}: layer {prefix}_{suffix}: not a 3-D convolution with bias "
                         f"(weight shapes {[a.shape for a in arrays]})")
    k = arrays[0].shape
    if not (k[0] == k[1] == k[2] and k[0] % 2 == 1):
        raise ModelError(f"{kf.path}: layer {prefix}_{suffix}: kernel {k}; only cubic odd kernels are supported")
    return k


def _check_names(kf: KerasFile, prefix: str, grammar: re.Pattern, what: str) -> None:
    for suffix in kf.networks[prefix]:
        if not grammar.fullmatch(suffix):
            raise ModelError(f"{kf.path}: layer {prefix}_{suffix}: not a layer of a {what}")


def _check_layers(kf: KerasFile, prefix: str, expected: dict[str, tuple], summary: str) -> None:
    """Every expected layer present with the expected shapes, and nothing else; ModelError naming
    the first layer (model order) that does not fit."""
    layers = kf.networks[prefix]
    for suffix, shapes in expected.items():
        if suffix not in layers:
            raise ModelError(f"{kf.path}: layer {prefix}_{suffix}: missing ({summary})")
        got = tuple(tuple(a.shape) for a in layers[suffix])
        if got != shapes:
            raise ModelError(f"{kf.path}: layer {prefix}_{suffix}: weight shapes {got}, expected {shapes} "
                             f"({summary})")
    for suffix in layers:
        if suffix not in expected:
            raise ModelError(f"{kf.path}: layer {prefix}_{suffix}: unexpected ({summary})")


def _numbers(layers: Weights, pattern: str) -> list[tuple[int, ...]]:
    found = (re.fullmatch(pattern, s) for s in layers)
    return sorted(tuple(map(int, m.groups())) for m in found if m)


def _encoder_start(kf: KerasFile, prefix: str, levels: int) -> tuple[int, int, int, int]:
    """(kernel size, input channels, first-level width, width multiplier) of an encoder."""
    k, _, _, in_channels, features = _conv_shape(kf, prefix, "conv_downarm_0_0")
    if levels < 2:
        return k, in_channels, features, 2
    wider = _conv_shape(kf, prefix, "conv_downarm_1_0")[4]
    if wider % features:
        raise ModelError(f"{kf.path}: layer {prefix}_conv_downarm_1_0: {wider} filters is not a multiple "
                         f"of the first level's {features}")
    return k, in_channels, features, wider // features


def infer_unet(kf: KerasFile, prefix: str) -> UNetSpec:
    """The U-Net architecture of network ``prefix``, checked layer by layer."""
    _check_names(kf, prefix, UNET_LAYER, "SynthSeg U-Net")
    layers = kf.networks[prefix]
    decoder = _numbers(layers, r"conv_uparm_(\d+)_\d+")
    if not decoder:
        raise ModelError(f"{kf.path}: layer {prefix}_conv_uparm_*: missing (no decoder in network {prefix})")
    levels = decoder[0][0]
    convs = 1 + max((c for (c,) in _numbers(layers, r"conv_downarm_0_(\d+)")), default=0)
    k, in_channels, features, multiplier = _encoder_start(kf, prefix, levels)
    n_labels = _conv_shape(kf, prefix, "likelihood")[4]
    width = lambda level: features * multiplier**level  # noqa: E731
    skips = []
    for step in range(levels - 1):
        name = f"conv_uparm_{levels + step}_0"
        below, skip = width(levels - 1 - step), width(levels - 2 - step)
        c_in = _conv_shape(kf, prefix, name)[3]
        if c_in not in (below, below + skip):
            raise ModelError(f"{kf.path}: layer {prefix}_{name}: {c_in} input channels, expected "
                             f"{below + skip} (with skip connection) or {below} (without)")
        skips.append(c_in == below + skip)
    removed = skips.count(False)
    for step, has in enumerate(skips):
        if has != (step < levels - 1 - removed):
            raise ModelError(f"{kf.path}: layer {prefix}_conv_uparm_{levels + step}_0: skip connections may "
                             "only be missing at the highest-resolution decoder steps")
    spec = UNetSpec(in_channels, n_labels, features, levels, convs, k, multiplier, removed)
    summary = (f"inferred {levels}-level U-Net, {convs} convs/level, kernel {k}, width {features}x{multiplier}^l, "
               f"{in_channels} -> {n_labels} channels, {removed} skips removed")
    _check_layers(kf, prefix, spec.layer_shapes(), summary)
    return spec


def infer_qc(kf: KerasFile, prefix: str = "qc") -> QCSpec:
    """The QC regressor architecture, checked layer by layer."""
    _check_names(kf, prefix, QC_LAYER, "SynthSeg QC regressor")
    layers = kf.networks[prefix]
    levels = 1 + max((lev for lev, _ in _numbers(layers, r"conv_downarm_(\d+)_(\d+)")), default=0)
    convs = 1 + max((c for (c,) in _numbers(layers, r"conv_downarm_0_(\d+)")), default=0)
    k, in_channels, features, multiplier = _encoder_start(kf, prefix, levels)
    n_outputs = _conv_shape(kf, prefix, "final_conv_1")[4]
    spec = QCSpec(in_channels, n_outputs, features, levels, convs, k, multiplier)
    summary = (f"inferred {levels}-level residual encoder, {convs} convs/level, kernel {k}, "
               f"width {features}x{multiplier}^l, {in_channels} -> {n_outputs} scores")
    _check_layers(kf, prefix, spec.layer_shapes(), summary)
    return spec


def _check_interface(kf: KerasFile, prefix: str, role: str, in_channels: int, labels: list[int]) -> None:
    wanted_in, accepted = ROLE_INTERFACE[role]
    first = f"{prefix}_conv_downarm_0_0"
    if in_channels != wanted_in:
        raise ModelError(f"{kf.path}: layer {first}: {in_channels} input channels, role {role} reads {wanted_in}")
    if labels not in accepted:
        last = f"{prefix}_final_conv_1" if role == "qc" else f"{prefix}_likelihood"
        counts = " or ".join(str(len(a)) for a in accepted)
        raise ModelError(f"{kf.path}: layer {last}: {len(labels)} output channels, role {role} gives {counts}")


def _output_labels(role: str, n: int) -> list[int]:
    for labels in ROLE_INTERFACE[role][1]:
        if len(labels) == n:
            return list(labels)
    return list(range(n))


def expand_labels(g: GraphBuilder, logits: str, post: str, source: list[int], target: list[int]) -> tuple[str, str]:
    """Re-order the channels of (logits, posteriors) from ``source`` to ``target`` labels; a target
    label the network lacks gets posterior 0 and logit equal to the lowest float32."""
    n = len(source)
    index = np.array([source.index(v) if v in source else n for v in target], np.int64)
    first = g.op("Slice", [post, g.const("fill/start", np.array([0], np.int64)),
                           g.const("fill/end", np.array([1], np.int64)), g.const("fill/axis", np.array([1], np.int64))],
                 "fill/first")
    zero = g.op("Mul", [first, g.const("fill/zero", np.array(0.0, np.float32))], "fill/zero_channel")
    lowest = g.op("Add", [zero, g.const("fill/lowest", np.array(np.finfo(np.float32).min, np.float32))],
                  "fill/lowest_channel")
    out = []
    for base, tensor, filler in (("logits", logits, lowest), ("posteriors", post, zero)):
        padded = g.op("Concat", [tensor, filler], f"fill/{base}_padded", axis=1)
        out.append(g.op("Gather", [padded, g.const(f"fill/{base}_index", index)], f"fill/{base}", axis=1))
    return out[0], out[1]


def convert_network(kf: KerasFile, prefix: str, role: str) -> ImportedNetwork:
    """Infer, check and convert one network of a file into the bundle interface of ``role``."""
    source = {"keras_prefix": prefix, "source_file": kf.path.name, "source_sha256": kf.sha256}
    doc = f"{role} network imported from {kf.path.name} (sha256 {kf.sha256}), Keras layers {prefix}_*"
    if role == "qc":
        spec = infer_qc(kf, prefix)
        _check_interface(kf, prefix, role, spec.in_channels, _output_labels(role, spec.n_outputs))
        return ImportedNetwork(role, qc_model(spec, kf.networks[prefix], doc=doc), QC_LABELS,
                               {"network": "qc_regressor", **asdict(spec), **source, "source_labels": QC_LABELS})
    spec = infer_unet(kf, prefix)
    labels = _output_labels(role, spec.n_labels)
    _check_interface(kf, prefix, role, spec.in_channels, labels)
    arch = {"network": "unet", **asdict(spec), **source, "source_labels": labels}
    if role != "synthseg" or labels == SYNTHSEG_2.values.tolist():
        return ImportedNetwork(role, unet_model(spec, kf.networks[prefix], doc), labels, arch)
    target = SYNTHSEG_2.values.tolist()
    g = GraphBuilder()
    logits, post = expand_labels(g, *add_unet(g, "input", spec, kf.networks[prefix]), labels, target)
    model = make_model(g, {"input": spec.in_channels}, {"logits": logits, "posteriors": post}, doc)
    arch["zero_channels"] = [v for v in target if v not in labels]
    return ImportedNetwork(role, model, target, arch)


def convert_file(kf: KerasFile, kinds: list[str] | None = None) -> list[ImportedNetwork]:
    """Networks of the given kinds (default: every kind the file holds); ModelError naming the first
    missing network layer when a kind is incomplete."""
    kinds = kinds or detect_kinds(kf)
    networks = []
    for kind in kinds:
        if kind not in KINDS:
            raise InputError(f"unknown kind {kind!r} (choose from {', '.join(KINDS)})")
        for prefix, role in KINDS[kind].items():
            if prefix not in kf.networks:
                raise ModelError(f"{kf.path}: layer {prefix}_conv_downarm_0_0: missing (kind {kind} needs "
                                 f"network {prefix}; the file holds {', '.join(sorted(kf.networks)) or 'none'})")
            networks.append(convert_network(kf, prefix, role))
    return networks


def import_keras(files: list[str | Path], out: str | Path, kinds: list[str] | None = None,
                 model_id: str | None = None) -> Bundle:
    """Convert Keras HDF5 files into one bundle at ``out``. ``kinds``: None (detect), one kind for
    every file, or one per file. Refuses to overwrite an existing bundle."""
    out = Path(out)
    if (out / "bundle.json").exists():
        raise InputError(f"{out}: already holds a model bundle; choose a new folder")
    if not files:
        raise InputError("import-keras: no HDF5 files given")
    if kinds and len(kinds) not in (1, len(files)):
        raise InputError(f"--kind given {len(kinds)} times for {len(files)} files: give it once, or once per file")
    per_file = [None] * len(files) if not kinds else (list(kinds) * len(files))[: len(files)]
    models, origin, records = {}, {}, []
    for path, kind in zip(files, per_file):
        kf = read_keras_h5(path)
        file_kinds = [kind] if kind else detect_kinds(kf)
        imported = convert_file(kf, file_kinds)
        for net in imported:
            if net.role in origin:
                raise InputError(f"{kf.path}: network role {net.role} is already provided by {origin[net.role]} "
                                 "(use --kind, once per file, to choose what to take from each file)")
            origin[net.role] = kf.path
            models[net.role] = (net.model, net.labels, net.architecture)
        records.append({"file": kf.path.name, "path": str(kf.path.resolve()), "sha256": kf.sha256,
                        "bytes": kf.path.stat().st_size, "layout": kf.layout, "keras_version": kf.keras_version,
                        "kinds": file_kinds, "roles": [n.role for n in imported],
                        "labels": {n.role: n.architecture["source_labels"] for n in imported}})
    all_kinds = [k for r in records for k in r["kinds"]]
    digest = hashlib.sha256("".join(r["sha256"] for r in records).encode()).hexdigest()[:12]
    provenance = {"source": "keras-hdf5", "importer": "morphometry.segment.keras_import", "files": records,
                  "labels": {role: labels for role, (_, labels, _) in models.items()}}
    description = "SynthSeg networks imported from Keras HDF5: " + ", ".join(
        f"{r['file']} ({'+'.join(r['kinds'])})" for r in records)
    bundle = write_bundle(out, model_id or f"keras-{'+'.join(all_kinds)}-{digest}", models, provenance,
                          resolution_mm=1.0, licence=LICENCE, description=description)
    problems = verify_bundle(bundle)
    if problems:
        raise ModelError(f"{out}: imported bundle failed verification: {'; '.join(problems)}")
    return bundle


def write_keras_h5(path: str | Path, networks: dict[str, Weights], full_model: bool = False,
                   keras_version: str = "2.3.1") -> None:
    """Write weights in the legacy Keras 2 HDF5 layout (for tests and benchmarks): one group per layer
    ``<prefix>_<suffix>`` holding ``<layer>/kernel:0``, ``<layer>/bias:0`` (convolutions) or
    ``gamma:0``, ``beta:0``, ``moving_mean:0``, ``moving_variance:0`` (batch norms) and their
    ``weight_names``; under ``model_weights/`` when ``full_model``."""
    import h5py

    order = {2: ("kernel:0", "bias:0"), 4: ("gamma:0", "beta:0", "moving_mean:0", "moving_variance:0")}
    with h5py.File(path, "w") as fh:
        root = fh.create_group("model_weights") if full_model else fh
        layer_names = []
        for prefix, layers in networks.items():
            for suffix, arrays in layers.items():
                layer = f"{prefix}_{suffix}"
                weight_names = [f"{layer}/{w}" for w in order[len(arrays)]]
                group = root.create_group(layer)
                group.attrs["weight_names"] = np.array([w.encode() for w in weight_names])
                for weight, array in zip(weight_names, arrays):
                    group.create_dataset(weight, data=np.asarray(array, np.float32))
                layer_names.append(layer)
        root.attrs["layer_names"] = np.array([n.encode() for n in layer_names])
        for attrs in (fh.attrs, root.attrs):
            attrs["backend"] = b"tensorflow"
            attrs["keras_version"] = keras_version.encode()
