"""Stage graphs: a bundle network wrapped with the glue the original graph applies around it.

A method is a chain of stages (morphometry.segment.methods). Every hand-over between networks (argmax,
one-hot, concatenation with the image, flip averaging, smoothing, the QC crop) is a node of these
graphs, so a chain runs on the device with no round trip through host memory. Stage inputs are
``image`` (N, 1, X, Y, Z) and/or ``previous`` (the output of the preceding stage); outputs are
``tissue`` (one-hot tissue groups), ``posteriors`` (label posteriors), ``parcellation`` or
``scores``.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, compose, helper

from morphometry.labels import SYNTHSEG_2
from morphometry.segment.networks import GraphBuilder, make_model

SMOOTHING_SIGMA = 0.5  # voxels, posterior smoothing of the non-robust network and of the parcellation
QC_SIZE = 224  # voxels per axis of the QC network's input
QC_EXCLUDED_INDEX = 24  # channel index excluded from the QC crop box (original quirk: label 47, README)


def gaussian_kernel_1d(sigma: float) -> np.ndarray:
    """Normalised 3-tap Gaussian used by the original for sigma 0.5 (size 2*floor(ceil(2.5s)/2)+1)."""
    half = int(np.ceil(2.5 * sigma)) // 2
    x = np.arange(-half, half + 1, dtype=np.float64)
    w = np.exp(-(x**2) / (2 * sigma**2))
    return w / w.sum()


def embed(g: GraphBuilder, model: onnx.ModelProto, x: str, prefix: str, output: str = "posteriors") -> str:
    """Copy a network into the builder under ``prefix``, reading tensor ``x``; return its output."""
    prefixed = compose.add_prefix(model, prefix)
    g.nodes.append(helper.make_node("Identity", [x], [f"{prefix}input"], name=f"{prefix}input/identity"))
    g.nodes.extend(prefixed.graph.node)
    g.initializers.extend(prefixed.graph.initializer)
    return f"{prefix}{output}"


def one_hot_argmax(g: GraphBuilder, x: str, n: int, base: str) -> str:
    """argmax over channels (first maximum), then a float one-hot with ``n`` channels."""
    idx = g.op("ArgMax", [x], f"{base}/argmax", axis=1, keepdims=1, select_last_index=0)
    classes = g.const(f"{base}/classes", np.arange(n, dtype=np.int64).reshape(1, n, 1, 1, 1))
    eq = g.op("Equal", [idx, classes], f"{base}/equal")
    return g.op("Cast", [eq], f"{base}/onehot", to=TensorProto.FLOAT)


def smooth(g: GraphBuilder, x: str, channels: int, sigma: float, base: str) -> str:
    """Gaussian smoothing of every channel with zero padding, as three 1-D depthwise convolutions
    (the 3-D kernel is the outer product of the normalised 1-D kernel, so this is exact)."""
    w1 = gaussian_kernel_1d(sigma).astype(np.float32)
    half = len(w1) // 2
    for axis in range(3):
        shape = [1, 1, 1]
        shape[axis] = len(w1)
        w = g.const(f"{base}/kernel{axis}", np.broadcast_to(w1.reshape(shape), (channels, 1, *shape)).copy())
        pads = [0, 0, 0] * 2
        pads[axis] = pads[axis + 3] = half
        x = g.op("Conv", [x, w], f"{base}/conv{axis}", group=channels, pads=pads)
    return x


def flip_axis0(g: GraphBuilder, x: str, base: str) -> str:
    """Reverse RAS axis 0 (tensor axis 2): left-right flip."""
    starts = g.const(f"{base}/starts", np.array([-1], np.int64))
    ends = g.const(f"{base}/ends", np.array([np.iinfo(np.int64).min], np.int64))
    axes = g.const(f"{base}/axes", np.array([2], np.int64))
    steps = g.const(f"{base}/steps", np.array([-1], np.int64))
    return g.op("Slice", [x, starts, ends, axes, steps], f"{base}/slice")


def tissue_stage(s1: onnx.ModelProto) -> onnx.ModelProto:
    """image -> S1 -> one-hot of its argmax (5 tissue groups)."""
    g = GraphBuilder("s1_stage/")
    post = embed(g, s1, "image", "s1/")
    return make_model(g, {"image": 1}, {"tissue": one_hot_argmax(g, post, 5, "handover")})


def denoise_stage(d: onnx.ModelProto) -> onnx.ModelProto:
    """one-hot tissue -> D -> one-hot of its argmax."""
    g = GraphBuilder("d_stage/")
    post = embed(g, d, "previous", "d/")
    return make_model(g, {"previous": 5}, {"tissue": one_hot_argmax(g, post, 5, "handover")})


def s2_stage(s2: onnx.ModelProto) -> onnx.ModelProto:
    """[image, one-hot tissue] (image first) -> S2 -> label posteriors."""
    g = GraphBuilder("s2_stage/")
    x = g.op("Concat", ["image", "previous"], "concat", axis=1)
    return make_model(g, {"image": 1, "previous": 5}, {"posteriors": embed(g, s2, x, "s2/")})


def synthseg_stage(net: onnx.ModelProto, flip: np.ndarray | None) -> onnx.ModelProto:
    """image -> network -> smoothing (sigma 0.5); with ``flip`` (channel permutation) the left-right
    test-time flip: the flipped image runs through the same network in the same batch, is flipped
    back, its channels permuted, and averaged with weight 0.5. The original smooths each branch
    before averaging; smoothing (a symmetric kernel, the same for every channel, zero padding)
    commutes with the flip and the permutation, so smoothing the average once is the same."""
    g = GraphBuilder("synthseg_stage/")
    n = len(SYNTHSEG_2.labels)
    if flip is None:
        post = smooth(g, embed(g, net, "image", "net/"), n, SMOOTHING_SIGMA, "smooth")
        return make_model(g, {"image": 1}, {"posteriors": post})
    both = g.op("Concat", ["image", flip_axis0(g, "image", "flip_in")], "batch", axis=0)
    post = embed(g, net, both, "net/")
    split = g.const("split_sizes", np.array([1, 1], np.int64))
    direct, flipped = g.name("direct"), g.name("flipped")
    g.nodes.append(helper.make_node("Split", [post, split], [direct, flipped], name=g.name("split"), axis=0))
    back = flip_axis0(g, flipped, "flip_out")
    perm = g.op("Gather", [back, g.const("flip_channels", flip.astype(np.int64))], "permute", axis=1)
    total = g.op("Add", [direct, perm], "sum")
    avg = g.op("Mul", [total, g.const("half", np.array(0.5, np.float32))], "average_lr")
    return make_model(g, {"image": 1}, {"posteriors": smooth(g, avg, n, SMOOTHING_SIGMA, "smooth")})


def relabel_stage(d_all: onnx.ModelProto) -> onnx.ModelProto:
    """label posteriors -> one-hot of their argmax (33) -> D_all -> label posteriors."""
    g = GraphBuilder("d_all_stage/")
    onehot = one_hot_argmax(g, "previous", len(SYNTHSEG_2.labels), "handover")
    return make_model(g, {"previous": len(SYNTHSEG_2.labels)}, {"posteriors": embed(g, d_all, onehot, "d_all/")})


def parcellation_stage(parc: onnx.ModelProto) -> onnx.ModelProto:
    """[image, not-cortex, cortex] from the argmax of the (un-postprocessed) segmentation posteriors
    (cortex = labels 3 or 42) -> parcellation network -> smoothing (sigma 0.5)."""
    g = GraphBuilder("parc_stage/")
    idx = g.op("ArgMax", ["previous"], "argmax", axis=1, keepdims=1, select_last_index=0)
    cortex_channels = [SYNTHSEG_2.channel_of(3), SYNTHSEG_2.channel_of(42)]
    left = g.op("Equal", [idx, g.const("left_cortex", np.array(cortex_channels[0], np.int64))], "is_left")
    right = g.op("Equal", [idx, g.const("right_cortex", np.array(cortex_channels[1], np.int64))], "is_right")
    cortex = g.op("Cast", [g.op("Or", [left, right], "is_cortex")], "cortex", to=TensorProto.FLOAT)
    not_cortex = g.op("Sub", [g.const("one", np.array(1.0, np.float32)), cortex], "not_cortex")
    x = g.op("Concat", ["image", not_cortex, cortex], "concat", axis=1)
    post = smooth(g, embed(g, parc, x, "parc/"), 69, SMOOTHING_SIGMA, "smooth")
    return make_model(g, {"image": 1, "previous": len(SYNTHSEG_2.labels)}, {"parcellation": post})


def qc_stage(qc: onnx.ModelProto) -> onnx.ModelProto:
    """label posteriors -> argmax -> 224^3 box around the brain (channel indices != 0 and != 24),
    zero-padded -> QC groups one-hot (9) -> QC network -> 9 scores."""
    g = GraphBuilder("qc_stage/")
    i64 = lambda name, v: g.const(name, np.array(v, np.int64))  # noqa: E731
    f32 = lambda name, v: g.const(name, np.array(v, np.float32))  # noqa: E731
    idx = g.op("ArgMax", ["previous"], "argmax", axis=1, keepdims=0, select_last_index=0)  # (1, X, Y, Z)
    not_bg = g.op("Not", [g.op("Equal", [idx, i64("zero", 0)], "is_bg")], "not_bg")
    not_ex = g.op("Not", [g.op("Equal", [idx, i64("excluded", QC_EXCLUDED_INDEX)], "is_ex")], "not_ex")
    coords = g.op("NonZero", [g.op("And", [not_bg, not_ex], "mask")], "coords")  # (4, N)
    shape = g.op("Shape", [idx], "shape")
    spatial = g.op("Slice", [shape, i64("s1", [1]), i64("s4", [4])], "spatial")  # (3,)
    xyz = g.op("Slice", [coords, i64("r1", [1]), i64("r4", [4])], "xyz")  # (3, N)
    count = g.op("Shape", [xyz], "count_shape")
    n = g.op("Gather", [count, i64("one", 1)], "count", axis=0)
    has = g.op("Greater", [n, i64("zero_n", 0)], "has_brain")
    lo_raw = g.op("ReduceMin", [xyz], "lo_raw", axes=[1], keepdims=0)
    hi_raw = g.op("Add", [g.op("ReduceMax", [xyz], "hi_max", axes=[1], keepdims=0), i64("plus1", 1)], "hi_raw")
    size_cap = g.op("Min", [spatial, i64("qc_size", [QC_SIZE] * 3)], "size_cap")
    lo = g.op("Where", [has, lo_raw, i64("zeros3", [0, 0, 0])], "lo")
    hi = g.op("Where", [has, hi_raw, size_cap], "hi")
    slack = g.op("Cast", [g.op("Sub", [i64("qc_size2", QC_SIZE), g.op("Sub", [hi, lo], "size")], "slack_i")],
                 "slack", to=TensorProto.FLOAT)
    half = g.op("Div", [slack, f32("two", 2.0)], "half_slack")
    before = g.op("Cast", [g.op("Ceil", [half], "ceil")], "before", to=TensorProto.INT64)
    after = g.op("Cast", [g.op("Floor", [half], "floor")], "after", to=TensorProto.INT64)
    start = g.op("Sub", [lo, before], "start")
    end = g.op("Add", [hi, after], "end")
    start_in = g.op("Max", [start, i64("zeros3b", [0, 0, 0])], "start_in")
    end_in = g.op("Min", [end, spatial], "end_in")
    box = g.op("Slice", [idx, start_in, end_in, i64("axes123", [1, 2, 3])], "box")
    pads = g.op("Concat", [i64("p0", [0]), g.op("Sub", [start_in, start], "pad_before"),
                           i64("p0b", [0]), g.op("Sub", [end, end_in], "pad_after")], "pads", axis=0)
    crop = g.op("Pad", [box, pads, i64("pad_value", 0)], "crop")
    groups = g.op("Gather", [g.const("qc_lookup", SYNTHSEG_2.qc_groups.astype(np.int64)), crop], "groups", axis=0)
    groups5 = g.op("Unsqueeze", [groups, i64("ax_c", [1])], "groups5")
    classes = g.const("qc_classes", np.arange(9, dtype=np.int64).reshape(1, 9, 1, 1, 1))
    onehot = g.op("Cast", [g.op("Equal", [groups5, classes], "qc_equal")], "qc_onehot", to=TensorProto.FLOAT)
    return make_model(g, {"previous": len(SYNTHSEG_2.labels)}, {"scores": embed(g, qc, onehot, "qc/", "scores")})

