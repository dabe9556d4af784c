"""Stage graphs against independent NumPy computations of the original's glue."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from scipy import ndimage

from morphometry.labels import SYNTHSEG_2
from morphometry.segment import stages

SHAPE = (32, 32, 32)


def run(model: onnx.ModelProto, **feeds) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {k: np.ascontiguousarray(v, np.float32) for k, v in feeds.items()})[0]


def net(tiny_bundle, role):
    return onnx.load(str(tiny_bundle.path(role)))


def test_robust_handover_is_hard_one_hot(tiny_bundle):
    x = np.random.default_rng(0).random((1, 1, *SHAPE))
    tissue = run(stages.tissue_stage(net(tiny_bundle, "s1")), image=x)
    s1 = ort.InferenceSession(net(tiny_bundle, "s1").SerializeToString(), providers=["CPUExecutionProvider"])
    probs = s1.run(["posteriors"], {"input": x.astype(np.float32)})[0]
    expected = np.eye(5, dtype=np.float32)[probs[0].argmax(0)]
    np.testing.assert_array_equal(tissue[0], np.moveaxis(expected, -1, 0))
    s2_out = run(stages.s2_stage(net(tiny_bundle, "s2")), image=x, previous=tissue)
    s2 = ort.InferenceSession(net(tiny_bundle, "s2").SerializeToString(), providers=["CPUExecutionProvider"])
    direct = s2.run(["posteriors"], {"input": np.concatenate([x, tissue], 1).astype(np.float32)})[0]
    np.testing.assert_allclose(s2_out, direct, atol=1e-6)


def test_flip_averaging_and_smoothing_match_the_original_order(tiny_bundle):
    x = np.random.default_rng(1).random((1, 1, *SHAPE)).astype(np.float32)
    out = run(stages.synthseg_stage(net(tiny_bundle, "synthseg"), SYNTHSEG_2.flip_channels), image=x)
    session = ort.InferenceSession(net(tiny_bundle, "synthseg").SerializeToString(), providers=["CPUExecutionProvider"])
    p = session.run(["posteriors"], {"input": x})[0][0].astype(np.float64)
    q = session.run(["posteriors"], {"input": np.ascontiguousarray(x[:, :, ::-1])})[0][0].astype(np.float64)
    w = stages.gaussian_kernel_1d(0.5)

    def smooth(v):  # the original: each branch smoothed (3^3 kernel, zero padding) before averaging
        for axis in (1, 2, 3):
            v = ndimage.correlate1d(v, w, axis=axis, mode="constant")
        return v

    back = smooth(q)[:, ::-1][SYNTHSEG_2.flip_channels]
    np.testing.assert_allclose(out[0], 0.5 * (smooth(p) + back), atol=2e-6)


def qc_crop_reference(idx: np.ndarray, size: int = 224) -> np.ndarray:
    """The QC crop of the original's ``predict_synthseg.build_model``, written independently in NumPy."""
    mask = (idx != 0) & (idx != 24)
    if mask.any():
        nz = np.nonzero(mask)
        lo = np.array([a.min() for a in nz])
        hi = np.array([a.max() + 1 for a in nz])
    else:
        lo, hi = np.zeros(3, int), np.minimum(idx.shape, size)
    out = np.zeros((size,) * 3, idx.dtype)
    start = lo - np.ceil((size - (hi - lo)) / 2).astype(int)
    src = tuple(slice(max(s, 0), min(s + size, n)) for s, n in zip(start, idx.shape))
    dst = tuple(slice(sl.start - s, sl.stop - s) for sl, s in zip(src, start))
    out[dst] = idx[src]
    return out


def test_qc_crop_matches_reference():
    """A QC 'network' that returns the mean of each one-hot channel exposes the crop exactly."""
    from onnx import TensorProto, helper

    node = helper.make_node("ReduceMean", ["input"], ["scores"], axes=[2, 3, 4], keepdims=0)
    graph = helper.make_graph([node], "qc", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 9, 224, 224, 224])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 9])])
    qc = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    rng = np.random.default_rng(2)
    for shape, box in (((256, 160, 192), (slice(20, 230), slice(10, 150), slice(40, 120))),  # tall: shrinks
                       ((96, 128, 64), (slice(10, 60), slice(30, 90), slice(5, 50)))):  # small: pads
        idx = np.zeros(shape, np.int64)
        idx[box] = rng.integers(0, 33, size=tuple(s.stop - s.start for s in box))
        post = np.zeros((1, 33, *shape), np.float32)
        np.put_along_axis(post[0], idx[None], 1.0, axis=0)
        got = run(stages.qc_stage(qc), previous=post)[0]
        groups = SYNTHSEG_2.qc_groups[qc_crop_reference(idx)]
        expected = np.array([(groups == g).mean() for g in range(9)])
        np.testing.assert_allclose(got, expected, atol=1e-6)
