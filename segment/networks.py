"""The SynthSeg U-Net as an ONNX graph, built from Keras-layout weights.

Architecture (the original's ``ext/neuron/models.py``: ``unet`` = ``conv_enc`` + ``conv_dec``): ``levels`` encoder levels of ``convs_per_level``
"same"-padded convolutions with bias and ELU, ``features * multiplier**level`` filters, batch
normalisation (epsilon 1e-3) after each level, 2x2x2 max pooling between levels; decoder steps of
nearest-neighbour x2 upsampling, concatenation [skip, upsampled] where the skip is kept (the skip is
the last encoder convolution's output *before* batch normalisation), convolutions, batch
normalisation; a linear 1x1x1 ``likelihood`` convolution and a softmax over channels.

Weights use the Keras layout and names without the network prefix: ``conv_downarm_{l}_{c}`` and
``conv_uparm_{L+s}_{c}`` -> (kernel (k, k, k, C_in, C_out), bias), ``bn_down_{l}`` / ``bn_up_{s}``
-> (gamma, beta, moving_mean, moving_variance), ``likelihood`` -> (kernel, bias).
Graphs use NCDHW tensors: (batch, channel, RAS axis 0, axis 1, axis 2).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
BN_EPSILON = 1e-3

Weights = dict[str, tuple[np.ndarray, ...]]


@dataclass(frozen=True)
class UNetSpec:
    """Hyper-parameters of one U-Net (defaults: the official S1/S2/SynthSeg network)."""

    in_channels: int
    n_labels: int
    features: int = 24
    levels: int = 5
    convs_per_level: int = 2
    kernel: int = 3
    multiplier: int = 2
    skips_removed: int = 0  # Keras skip_n_concatenations: highest-resolution decoder steps without a skip

    def width(self, level: int) -> int:
        return self.features * self.multiplier**level

    def keeps_skip(self, step: int) -> bool:
        return step < self.levels - self.skips_removed - 1

    def layer_shapes(self) -> dict[str, tuple[tuple[int, ...], ...]]:
        """Expected Keras weight shapes by layer name (without prefix)."""
        k, shapes, c_in = self.kernel, {}, self.in_channels
        for lev in range(self.levels):
            for c in range(self.convs_per_level):
                shapes[f"conv_downarm_{lev}_{c}"] = ((k, k, k, c_in, self.width(lev)), (self.width(lev),))
                c_in = self.width(lev)
            shapes[f"bn_down_{lev}"] = ((c_in,),) * 4
        for step in range(self.levels - 1):
            lev = self.levels - 2 - step
            c_in = c_in + self.width(lev) if self.keeps_skip(step) else c_in
            for c in range(self.convs_per_level):
                shapes[f"conv_uparm_{self.levels + step}_{c}"] = ((k, k, k, c_in, self.width(lev)), (self.width(lev),))
                c_in = self.width(lev)
            shapes[f"bn_up_{step}"] = ((c_in,),) * 4
        shapes["likelihood"] = ((1, 1, 1, c_in, self.n_labels), (self.n_labels,))
        return shapes

    def n_parameters(self) -> int:
        return sum(int(np.prod(s)) for arrays in self.layer_shapes().values() for s in arrays)


OFFICIAL_SPECS = {
    "s1": UNetSpec(in_channels=1, n_labels=5),
    "d": UNetSpec(in_channels=5, n_labels=5, features=16, kernel=5, skips_removed=2),
    "s2": UNetSpec(in_channels=6, n_labels=33),
    "synthseg": UNetSpec(in_channels=1, n_labels=33),
    "parc": UNetSpec(in_channels=3, n_labels=69),
}


def random_weights(spec, rng: np.random.Generator, relu: bool = False) -> Weights:
    """Seeded weights of the shapes ``spec.layer_shapes()`` gives: uniform kernels (Glorot, or He for
    ReLU networks), N(0, 0.1) biases, near-identity batch norms."""
    weights: Weights = {}
    for name, shapes in spec.layer_shapes().items():
        if name.startswith("bn_"):
            (c,) = shapes[0]
            weights[name] = (rng.uniform(0.8, 1.2, c), rng.normal(0, 0.1, c), rng.normal(0, 0.1, c),
                             rng.uniform(0.5, 1.5, c))
        else:
            kshape, bshape = shapes
            fan_in, fan_out = np.prod(kshape[:4]), np.prod(kshape[:3]) * kshape[4]
            limit = np.sqrt(6.0 / fan_in) if relu else np.sqrt(6.0 / (fan_in + fan_out))
            weights[name] = (rng.uniform(-limit, limit, kshape), rng.normal(0, 0.1, bshape))
    return {k: tuple(np.asarray(a, np.float32) for a in v) for k, v in weights.items()}


def check_weights(spec, weights: Weights) -> None:
    """Raise ValueError naming the first layer whose weights are missing or mis-shaped; ``spec`` is
    any network description with ``layer_shapes()`` (a :class:`UNetSpec` or a QC regressor's)."""
    for name, shapes in spec.layer_shapes().items():
        if name not in weights:
            raise ValueError(f"layer {name}: missing")
        got = tuple(tuple(a.shape) for a in weights[name])
        if got != shapes:
            raise ValueError(f"layer {name}: weight shapes {got}, expected {shapes}")


def read_weights(model: onnx.ModelProto, spec: UNetSpec) -> Weights:
    """The Keras-layout weights of a network built by :func:`unet_model` (inverse of its naming:
    ``{layer}/W`` (C_out, C_in, k, k, k), ``{layer}/B``, ``{bn}/gamma|beta|mean|var``), in float32."""
    arrays = {t.name: numpy_helper.to_array(t).astype(np.float32) for t in model.graph.initializer}
    weights: Weights = {}
    try:
        for name in spec.layer_shapes():
            if name.startswith("bn_"):
                weights[name] = tuple(arrays[f"{name}/{n}"] for n in ("gamma", "beta", "mean", "var"))
            else:
                weights[name] = (np.ascontiguousarray(arrays[f"{name}/W"].transpose(2, 3, 4, 1, 0)), arrays[f"{name}/B"])
    except KeyError as exc:
        raise ValueError(f"no initializer {exc.args[0]!r}: not a network built by morphometry") from None
    check_weights(spec, weights)
    return weights


class GraphBuilder:
    """Collects nodes and initialisers under a name prefix, so graphs can be composed."""

    def __init__(self, prefix: str = ""):
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def name(self, base: str) -> str:
        return f"{self.prefix}{base}"

    def const(self, base: str, array: np.ndarray) -> str:
        name = self.name(base)
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def op(self, op_type: str, inputs: list[str], base: str, **attrs) -> str:
        out = self.name(base)
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def conv(self, x: str, base: str, kernel: np.ndarray, bias: np.ndarray, activation: str | None) -> str:
        """Keras Conv3D (k, k, k, C_in, C_out) with 'same' zero padding; optional activation."""
        w = self.const(f"{base}/W", np.ascontiguousarray(np.transpose(kernel, (4, 3, 0, 1, 2)), np.float32))
        b = self.const(f"{base}/B", np.asarray(bias, np.float32))
        half = kernel.shape[0] // 2
        y = self.op("Conv", [x, w, b], f"{base}/conv", pads=[half] * 6)
        if activation == "elu":
            return self.op("Elu", [y], f"{base}/elu", alpha=1.0)
        if activation == "relu":
            return self.op("Relu", [y], f"{base}/relu")
        return y

    def batch_norm(self, x: str, base: str, gamma, beta, mean, var) -> str:
        ins = [x] + [self.const(f"{base}/{n}", np.asarray(a, np.float32))
                     for n, a in zip(("gamma", "beta", "mean", "var"), (gamma, beta, mean, var))]
        return self.op("BatchNormalization", ins, f"{base}/bn", epsilon=BN_EPSILON)

    def max_pool(self, x: str, base: str) -> str:
        return self.op("MaxPool", [x], base, kernel_shape=[2, 2, 2], strides=[2, 2, 2])

    def upsample(self, x: str, base: str) -> str:
        scales = self.const(f"{base}/scales", np.array([1, 1, 2, 2, 2], np.float32))
        return self.op("Resize", [x, "", scales], base, mode="nearest",
                       coordinate_transformation_mode="asymmetric", nearest_mode="floor")


def add_unet(g: GraphBuilder, x: str, spec: UNetSpec, weights: Weights) -> tuple[str, str]:
    """Append a U-Net reading tensor ``x``; return (logits, softmax posteriors) tensor names."""
    check_weights(spec, weights)
    return add_head(g, add_levels(g, x, spec, weights, 0), weights)


def add_encoder_convs(g: GraphBuilder, x: str, spec: UNetSpec, weights: Weights, level: int) -> str:
    """The convolutions of encoder ``level``; return their output (the level's skip tensor)."""
    t = x
    for c in range(spec.convs_per_level):
        t = g.conv(t, f"conv_downarm_{level}_{c}", *weights[f"conv_downarm_{level}_{c}"], activation="elu")
    return t


def add_encoder_level(g: GraphBuilder, x: str, spec: UNetSpec, weights: Weights, level: int) -> tuple[str, str]:
    """The convolutions and batch norm of encoder ``level``; return (skip, normalised output)."""
    t = add_encoder_convs(g, x, spec, weights, level)
    return t, g.batch_norm(t, f"bn_down_{level}", *weights[f"bn_down_{level}"])


def add_decoder_level(g: GraphBuilder, inner: str, skip: str | None, spec: UNetSpec, weights: Weights,
                      level: int) -> str:
    """The decoder step that returns to ``level``: upsample ``inner`` (the output of level + 1),
    concatenate [skip, upsampled] where the step keeps its skip, convolutions, batch norm."""
    step = spec.levels - 2 - level
    name = spec.levels + step
    t = g.upsample(inner, f"up_{name}")
    if spec.keeps_skip(step):
        t = g.op("Concat", [skip, t], f"merge_{name}", axis=1)
    for c in range(spec.convs_per_level):
        t = g.conv(t, f"conv_uparm_{name}_{c}", *weights[f"conv_uparm_{name}_{c}"], activation="elu")
    return g.batch_norm(t, f"bn_up_{step}", *weights[f"bn_up_{step}"])


def add_levels(g: GraphBuilder, x: str, spec: UNetSpec, weights: Weights, level: int) -> str:
    """Levels ``level`` .. bottom and back: the output of the decoder step that returns to ``level``
    (for the bottom level, its encoder output)."""
    skip, t = add_encoder_level(g, x, spec, weights, level)
    if level == spec.levels - 1:
        return t
    inner = add_levels(g, g.max_pool(t, f"maxpool_{level}"), spec, weights, level + 1)
    return add_decoder_level(g, inner, skip, spec, weights, level)


def add_head(g: GraphBuilder, t: str, weights: Weights) -> tuple[str, str]:
    """The 1x1x1 ``likelihood`` convolution and the softmax; return (logits, posteriors)."""
    logits = g.conv(t, "likelihood", *weights["likelihood"], activation=None)
    return logits, softmax_channels(g, logits, "prediction")


def softmax_channels(g: GraphBuilder, x: str, base: str) -> str:
    """Softmax over the channel axis, spelled out: ONNX Runtime's Softmax on a non-last axis of a
    5-D tensor transposes the whole volume and is an order of magnitude slower."""
    peak = g.op("ReduceMax", [x], f"{base}/max", axes=[1], keepdims=1)
    e = g.op("Exp", [g.op("Sub", [x, peak], f"{base}/shift")], f"{base}/exp")
    total = g.op("ReduceSum", [e, g.const(f"{base}/axes", np.array([1], np.int64))], f"{base}/sum", keepdims=1)
    return g.op("Div", [e, total], f"{base}/div")


def make_model(g: GraphBuilder, inputs: dict[str, int], outputs: dict[str, str], doc: str = "",
               index_inputs: tuple[str, ...] = ()) -> onnx.ModelProto:
    """Wrap a builder's nodes into a model: ``inputs`` name -> channels (float32 N, C, X, Y, Z),
    ``index_inputs`` int64 inputs of shape (1,), ``outputs`` name -> tensor."""
    dims = ["batch", None, "x", "y", "z"]
    graph_inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [dims[0], c, *dims[2:]])
                    for n, c in inputs.items()]
    graph_inputs += [helper.make_tensor_value_info(n, TensorProto.INT64, [1]) for n in index_inputs]
    nodes = list(g.nodes)
    graph_outputs = []
    for out_name, tensor in outputs.items():
        nodes.append(helper.make_node("Identity", [tensor], [out_name], name=f"{out_name}/identity"))
        graph_outputs.append(helper.make_tensor_value_info(out_name, TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "morphometry", graph_inputs, graph_outputs, g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="morphometry", doc_string=doc)
    model.ir_version = 8
    return model


def unet_model(spec: UNetSpec, weights: Weights, doc: str = "") -> onnx.ModelProto:
    """A standalone network: input ``input`` (N, C_in, X, Y, Z) -> ``logits`` and ``posteriors``."""
    g = GraphBuilder()
    logits, post = add_unet(g, "input", spec, weights)
    return make_model(g, {"input": spec.in_channels}, {"logits": logits, "posteriors": post}, doc)


def unet_parts(spec: UNetSpec, weights: Weights, split: int) -> dict[str, onnx.ModelProto]:
    """The U-Net cut so that its top ``split`` levels can run in slabs (morphometry.segment.slabs).

    ``enc{l}``: ``x`` -> ``pooled`` (the level's normalised output, max-pooled) and, for l > 0 where
    the level keeps its skip, ``skip`` (the skip tensor); ``mid``: ``x`` (the pooled output of level
    split-1) -> ``features`` (levels split .. bottom and back); ``dec{l}``: ``inner`` (the output of
    level l+1) [+ ``skip``] -> ``features``, for l = 0 -> ``posteriors`` (likelihood and softmax).
    The top level's skip is not passed but recomputed inside ``dec0``: it reads ``x`` (input rows)
    and computes the skip rows [``skip_start``, ``skip_stop``) of them. Composed, the parts compute
    what :func:`unet_model` computes, with the same nodes.
    """
    if not 0 < split < spec.levels:
        raise ValueError(f"split {split}: the network has {spec.levels} levels")
    check_weights(spec, weights)
    parts = {}
    for level in range(split):
        keeps = spec.keeps_skip(spec.levels - 2 - level)
        g = GraphBuilder()
        skip, t = add_encoder_level(g, "x", spec, weights, level)
        c_in = spec.in_channels if level == 0 else spec.width(level - 1)
        outputs = {"pooled": g.max_pool(t, f"maxpool_{level}"), **({"skip": skip} if keeps and level > 0 else {})}
        parts[f"enc{level}"] = make_model(g, {"x": c_in}, outputs)
        g = GraphBuilder()
        inputs, index_inputs = {"inner": spec.width(level + 1)}, ()
        if keeps and level == 0:
            inputs["x"], index_inputs = spec.in_channels, ("skip_start", "skip_stop")
            rows = g.const("skip_rows/axes", np.array([2], np.int64))
            skip = g.op("Slice", [add_encoder_convs(g, "x", spec, weights, 0), *index_inputs, rows], "skip_rows")
        elif keeps:
            inputs["skip"], skip = spec.width(level), "skip"
        t = add_decoder_level(g, "inner", skip if keeps else None, spec, weights, level)
        outputs = {"posteriors": add_head(g, t, weights)[1]} if level == 0 else {"features": t}
        parts[f"dec{level}"] = make_model(g, inputs, outputs, index_inputs=index_inputs)
    g = GraphBuilder()
    parts["mid"] = make_model(g, {"x": spec.width(split - 1)}, {"features": add_levels(g, "x", spec, weights, split)})
    return parts
