"""The upsampling fusion (morphometry.segment.upsample_fusion) against independent computations.

The rewritten convolution is checked against SciPy (repeat every voxel 2 x 2 x 2 times, correlate
with zero padding), whole U-Nets of both kernel sizes against their unrewritten graphs, patterns
that must be left alone, and the stage graphs the engines compile.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from scipy import ndimage

from morphometry.segment import stages
from morphometry.segment.networks import GraphBuilder, UNetSpec, make_model, random_weights, unet_model, unet_parts
from morphometry.segment.upsample_fusion import fuse_upsampling, transposed_kernel


def run(model: onnx.ModelProto, **feeds) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {k: np.ascontiguousarray(v, np.float32 if v.dtype.kind == "f" else np.int64)
                              for k, v in feeds.items()})


def ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def upsample_conv_graph(k: int, pieces: list[str], w: np.ndarray, b: np.ndarray, **resize_attrs) -> onnx.ModelProto:
    """inner (C_up channels) -> nearest x2 -> Concat(pieces, 'up' marks the upsampled one) -> Conv k^3."""
    g = GraphBuilder()
    attrs = dict(mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    attrs.update(resize_attrs)
    scales = g.const("scales", np.array([1, 1, 2, 2, 2], np.float32))
    up = g.op("Resize", ["inner", "", scales], "up", **attrs)
    x = up if pieces == ["up"] else g.op("Concat", [up if p == "up" else p for p in pieces], "merge", axis=1)
    y = g.op("Conv", [x, g.const("W", w), g.const("B", b)], "conv", pads=[k // 2] * 6)
    inputs = {"inner": 3, **{p: 2 for p in pieces if p != "up"}}
    return make_model(g, inputs, {"out": y})


def scipy_reference(feeds: dict, pieces: list[str], w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The convolution of [pieces] with the upsampled tensor made by np.repeat, by SciPy (float64)."""
    up = feeds["inner"][0].astype(np.float64)
    for axis in (1, 2, 3):
        up = np.repeat(up, 2, axis=axis)
    x = np.concatenate([up if p == "up" else feeds[p][0].astype(np.float64) for p in pieces])
    out = np.empty((w.shape[0], *x.shape[1:]))
    for o in range(w.shape[0]):
        out[o] = b[o] + sum(ndimage.correlate(x[i], w[o, i], mode="constant") for i in range(x.shape[0]))
    return out


@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("pieces", [["up"], ["a", "up"], ["up", "a"], ["a", "up", "c"]])
def test_fused_convolution_equals_upsample_then_correlate(k, pieces):
    rng = np.random.default_rng(k)
    c_in = sum(3 if p == "up" else 2 for p in pieces)
    w = rng.normal(size=(4, c_in, k, k, k)).astype(np.float32)
    b = rng.normal(size=4).astype(np.float32)
    model = upsample_conv_graph(k, pieces, w, b)
    fused = fuse_upsampling(model)
    assert "Resize" not in ops(fused) and "ConvTranspose" in ops(fused)
    feeds = {"inner": rng.normal(size=(1, 3, 5, 4, 3))}
    feeds.update({p: rng.normal(size=(1, 2, 10, 8, 6)) for p in pieces if p != "up"})
    (got,) = run(fused, **feeds)
    np.testing.assert_allclose(got[0], scipy_reference(feeds, pieces, w, b), atol=2e-5, rtol=1e-5)


def test_transposed_kernel_sums_the_taps_that_read_one_coarse_voxel():
    # one axis of a 3-tap kernel [p, q, r]: even outputs read coarse c-1 (p) and c (q + r), odd ones
    # c (p + q) and c+1 (r); the transposed kernel is [r, q + r, p + q, p] (taps a = 0..3)
    w = np.zeros((1, 1, 3, 3, 3), np.float32)
    w[0, 0, :, 1, 1] = [1.0, 10.0, 100.0]
    t = transposed_kernel(w)
    assert t.shape == (1, 1, 4, 4, 4)
    np.testing.assert_array_equal(t[0, 0, :, 1, 1], [100.0, 110.0, 11.0, 1.0])
    assert np.isclose(t.sum(), 8 * w.sum())  # every tap is read by each of the 8 parities once


SPECS = {
    "k3-skips": UNetSpec(in_channels=2, n_labels=3, features=3, levels=4),
    "k5-no-top-skips": UNetSpec(in_channels=5, n_labels=5, features=2, levels=4, kernel=5, skips_removed=2),
}


@pytest.mark.parametrize("name", SPECS)
def test_whole_unet_equals_its_unfused_graph(name):
    spec = SPECS[name]
    rng = np.random.default_rng(3)
    model = unet_model(spec, random_weights(spec, rng))
    fused = fuse_upsampling(model)
    assert ops(fused).count("ConvTranspose") == spec.levels - 1
    assert "Resize" not in ops(fused)
    x = rng.normal(size=(1, spec.in_channels, 24, 16, 32))
    for a, b in zip(run(model, input=x), run(fused, input=x), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_slab_decoder_with_a_recomputed_skip_is_fused():
    """dec0 of the slab parts slices its skip rows with run-time bounds, so shape inference cannot
    size the skip: its channels are what the convolution's kernel leaves for it."""
    spec = SPECS["k3-skips"]
    rng = np.random.default_rng(4)
    model = unet_parts(spec, random_weights(spec, rng), 1)["dec0"]
    fused = fuse_upsampling(model)
    assert ops(fused).count("ConvTranspose") == 1 and "Resize" not in ops(fused)
    feeds = dict(x=rng.normal(size=(1, spec.in_channels, 16, 16, 8)), inner=rng.normal(size=(1, 6, 5, 8, 4)),
                 skip_start=np.array([2]), skip_stop=np.array([12]))
    (want,), (got,) = run(model, **feeds), run(fused, **feeds)
    assert got.shape == (1, spec.n_labels, 10, 16, 8)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_stage_graphs_are_fused(tiny_bundle):
    s1 = onnx.load(str(tiny_bundle.path("s1")))
    model = stages.tissue_stage(s1)
    fused = fuse_upsampling(model)
    assert ops(fused).count("ConvTranspose") == 4 and "Resize" not in ops(fused)
    x = np.random.default_rng(0).random((1, 1, 32, 32, 32))
    np.testing.assert_array_equal(run(fused, image=x)[0], run(model, image=x)[0])


def unchanged(model: onnx.ModelProto) -> bool:
    return fuse_upsampling(model).SerializeToString() == model.SerializeToString()


def test_patterns_that_are_not_exact_are_left_alone():
    rng = np.random.default_rng(1)
    w, b = rng.normal(size=(4, 3, 3, 3, 3)).astype(np.float32), np.zeros(4, np.float32)
    assert unchanged(upsample_conv_graph(3, ["up"], w, b, mode="linear"))
    assert unchanged(upsample_conv_graph(3, ["up"], w, b, coordinate_transformation_mode="align_corners"))
    # an even kernel has no 'same' padding; a strided convolution reads every other voxel
    assert unchanged(upsample_conv_graph(2, ["up"], w[..., :2, :2, :2], b))
    strided = upsample_conv_graph(3, ["up"], w, b)
    strided.graph.node[-2].attribute.append(onnx.helper.make_attribute("strides", [2, 2, 2]))
    assert unchanged(strided)


def test_an_upsampled_tensor_read_twice_is_left_alone():
    rng = np.random.default_rng(2)
    g = GraphBuilder()
    up = g.upsample("inner", "up")
    w = g.const("W", rng.normal(size=(2, 3, 3, 3, 3)).astype(np.float32))
    y = g.op("Conv", [up, w], "conv", pads=[1] * 6)
    model = make_model(g, {"inner": 3}, {"out": y, "up": up})
    assert unchanged(model)
