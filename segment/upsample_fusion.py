"""Exact rewrite of "nearest x2 upsampling, [concatenation,] convolution" into a strided transposed
convolution on the coarse tensor (plus a convolution of the other concatenated inputs).

A U-Net decoder step upsamples its inner tensor by repeating each voxel 2 x 2 x 2 times and
convolves it with a k x k x k kernel. Along one axis, the fine output at 2c + p reads fine inputs
2c + p - k//2 .. 2c + p + k//2, which are only (k + 1) / 2 distinct coarse voxels; summing the
kernel taps that read the same coarse voxel gives a transposed convolution of stride 2, kernel
k + 1 and padding k//2 on the coarse tensor, with (k + 1)**3 / 8 instead of k**3 multiply-adds per
fine voxel and input channel (8 instead of 27 for k = 3, 27 instead of 125 for k = 5), and neither
the upsampled nor the concatenated fine tensor is formed. Zero padding at the fine grid's faces is
zero padding at the coarse grid's faces, so every voxel equals the original graph's up to float32
rounding (different summation order). The kernel of the transposed convolution, per axis:
``K[a] = W[k - 1 - a] + W[k - a]`` (a = 0 .. k; taps outside 0 .. k - 1 are zero).

On the official networks' decoders this removes about a quarter of the multiply-adds; measured
in docs/benchmarks.md.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper


def transposed_kernel(weight: np.ndarray) -> np.ndarray:
    """ONNX Conv weight (C_out, C_in, k, k, k), odd k, applied after x2 nearest upsampling ->
    the equivalent ConvTranspose weight (C_in, C_out, k + 1, k + 1, k + 1), float32."""
    fused = weight.astype(np.float32)
    for axis in (2, 3, 4):  # K[a] = W[k - 1 - a] + W[k - a]: sums of neighbouring taps, reversed
        padded = np.pad(fused, [(1, 1) if d == axis else (0, 0) for d in range(5)])
        lead = (slice(None),) * axis
        fused = np.flip(padded[lead + (slice(None, -1),)] + padded[lead + (slice(1, None),)], axis)
    return np.ascontiguousarray(fused.transpose(1, 0, 2, 3, 4), np.float32)


def fuse_upsampling(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with every fusable upsampling-convolution rewritten (module docstring);
    graphs without one are returned unchanged. Channel counts come from ONNX shape inference (one
    concatenated input it cannot size gets the convolution's remaining input channels)."""
    graph = model.graph
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    init = {t.name: t for t in graph.initializer}
    resizes = [node for node in graph.node if _is_nearest_x2(node, init)]
    if not resizes:  # e.g. the encoder parts of slabs: no shape inference needed
        return model
    channels = _channel_counts(model)
    plans = [p for node in resizes if (p := _match(node, consumers, init, channels)) is not None]
    if not plans:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    removed = {name for plan in plans for name in plan["remove"]}
    by_conv = {plan["conv"].output[0]: plan for plan in plans}
    new_nodes, new_inits = [], []
    for node in model.graph.node:
        if node.output[0] in by_conv:
            nodes, inits = _fused_nodes(by_conv[node.output[0]], init)
            new_nodes += nodes
            new_inits += inits
        elif node.output[0] not in removed:
            new_nodes.append(node)
    del g.node[:]
    g.node.extend(new_nodes)
    g.initializer.extend(new_inits)
    used = {name for node in g.node for name in node.input}
    kept = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(kept)
    return out


def _channel_counts(model: onnx.ModelProto) -> dict[str, int]:
    """Tensor name -> static channel count (axis 1) where shape inference knows it."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - an uninferable graph is simply not rewritten
        return {}
    counts = {}
    for info in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        dims = info.type.tensor_type.shape.dim
        if len(dims) > 1 and dims[1].HasField("dim_value"):
            counts[info.name] = dims[1].dim_value
    return counts


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _is_nearest_x2(node: onnx.NodeProto, init: dict) -> bool:
    """A Resize that repeats each voxel 2 x 2 x 2 times (nearest, asymmetric, floor, scales 1 1 2 2 2)."""
    if node.op_type != "Resize" or len(node.input) != 3 or node.input[2] not in init:
        return False
    attrs = (_attr(node, "mode", b"nearest"), _attr(node, "coordinate_transformation_mode", b"half_pixel"),
             _attr(node, "nearest_mode", b"round_prefer_floor"))
    scales = numpy_helper.to_array(init[node.input[2]])
    return attrs == (b"nearest", b"asymmetric", b"floor") and scales.tolist() == [1, 1, 2, 2, 2]


def _plain_conv(node: onnx.NodeProto, init: dict) -> bool:
    """A stride-1, undilated, ungrouped 3-D convolution with an odd cubic kernel in the initialisers
    and 'same' zero padding."""
    if node.op_type != "Conv" or node.input[1] not in init or (len(node.input) > 2 and node.input[2] not in init):
        return False
    shape = list(init[node.input[1]].dims)
    k = shape[2] if len(shape) == 5 else 0
    return (k % 2 == 1 and shape[2:] == [k] * 3 and _attr(node, "group", 1) == 1
            and _attr(node, "auto_pad", b"NOTSET") == b"NOTSET"
            and list(_attr(node, "strides", [1] * 3)) == [1] * 3
            and list(_attr(node, "dilations", [1] * 3)) == [1] * 3
            and list(_attr(node, "pads", [0] * 6)) == [k // 2] * 6)


def _match(resize: onnx.NodeProto, consumers: dict, init: dict, channels: dict) -> dict | None:
    """The rewrite plan of a nearest x2 ``resize`` (its convolution, the concatenated inputs and the channel
    range of each in the convolution's weight), or None when the pattern does not hold."""
    up = resize.output[0]
    users = consumers.get(up, [])
    if len(users) != 1:
        return None
    conv, concat = users[0], None
    if conv.op_type == "Concat":
        concat = conv
        after = consumers.get(concat.output[0], [])
        if _attr(concat, "axis") != 1 or len(after) != 1 or list(concat.input).count(up) != 1:
            return None
        conv = after[0]
    if not _plain_conv(conv, init):
        return None
    pieces = list(concat.input) if concat else [up]
    if resize.input[0] not in channels:
        return None
    sizes = [channels[resize.input[0]] if p == up else channels.get(p) for p in pieces]
    total = init[conv.input[1]].dims[1]
    if sizes.count(None) == 1:  # e.g. a dynamically sliced skip: what the kernel leaves for it
        sizes[sizes.index(None)] = total - sum(n for n in sizes if n is not None)
    if None in sizes or min(sizes) < 1 or sum(sizes) != total:
        return None
    starts = np.cumsum([0, *sizes])
    ranges = {p: (int(starts[i]), int(starts[i + 1])) for i, p in enumerate(pieces)}
    remove = [resize.output[0], conv.output[0]] + ([concat.output[0]] if concat else [])
    return {"resize": resize, "conv": conv, "pieces": pieces, "ranges": ranges, "remove": remove}


def _fused_nodes(plan: dict, init: dict) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Nodes (and their initialisers) that replace one plan's resize, concatenation and convolution;
    the last one writes the convolution's output tensor."""
    resize, conv = plan["resize"], plan["conv"]
    weight = numpy_helper.to_array(init[conv.input[1]])
    k, base, result = weight.shape[2], conv.name or conv.output[0], conv.output[0]
    up = resize.output[0]
    lo, hi = plan["ranges"][up]
    nodes, inits = [], [numpy_helper.from_array(transposed_kernel(weight[:, lo:hi]), f"{base}/upsampled_kernel")]
    t_inputs = [resize.input[0], inits[0].name] + ([conv.input[2]] if len(conv.input) > 2 else [])
    others = [p for p in plan["pieces"] if p != up]
    t_out = result if not others else f"{base}/from_upsampled"
    nodes.append(helper.make_node("ConvTranspose", t_inputs, [t_out], name=f"{base}/upsampled",
                                  strides=[2, 2, 2], pads=[k // 2] * 6))
    if others:
        columns = np.concatenate([np.arange(*plan["ranges"][p]) for p in others])
        inits.append(numpy_helper.from_array(np.ascontiguousarray(weight[:, columns]), f"{base}/others_kernel"))
        x = others[0]
        if len(others) > 1:
            x = f"{base}/others"
            nodes.append(helper.make_node("Concat", others, [x], name=x, axis=1))
        s_out = f"{base}/from_others"
        nodes.append(helper.make_node("Conv", [x, inits[1].name], [s_out], name=s_out, pads=[k // 2] * 6))
        nodes.append(helper.make_node("Add", [s_out, t_out], [result], name=f"{base}/sum"))
    return nodes, inits
