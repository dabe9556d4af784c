"""CUDA execution gives the CPU's posteriors (skipped where CUDA is not usable)."""

from __future__ import annotations

import numpy as np
import pytest

from morphometry.segment.methods import resolve_methods
from morphometry.segment.runtime import Engine, RuntimeConfig, cuda_works

pytestmark = pytest.mark.gpu


@pytest.mark.skipif(not cuda_works(), reason="needs onnxruntime-gpu and a working CUDA device")
@pytest.mark.parametrize("fp16", [False, True])
def test_cuda_matches_cpu(tiny_bundle, fp16):
    if fp16:
        pytest.importorskip("onnxconverter_common", reason="--precision fp16 needs onnxconverter-common (extra gpu)")
    methods = resolve_methods(["synthseg+", "s1+s2", "synthseg"])
    image = np.random.default_rng(0).random((64, 64, 64), dtype=np.float32)
    cpu = {m.name: post for m, _, post in Engine(tiny_bundle, methods, RuntimeConfig(device="cpu")).segment(image)}
    gpu_engine = Engine(tiny_bundle, methods, RuntimeConfig(device="cuda", precision="fp16" if fp16 else "fp32"))
    assert gpu_engine.device == "cuda"
    for method, _, post in gpu_engine.segment(image):
        agree = (post.argmax(0) == cpu[method.name].argmax(0)).mean()
        assert agree > (0.99 if fp16 else 0.9999), method.name
        if not fp16:
            np.testing.assert_allclose(post, cpu[method.name], atol=1e-4)
