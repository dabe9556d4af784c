"""The OpenVINO engine: stage graphs compiled by OpenVINO's CPU plugin (oneDNN kernels).

OpenVINO reads the bundle's ONNX graphs directly (decoders' upsampling fused into their convolutions,
morphometry.segment.upsample_fusion), with dynamic spatial sizes (one compilation per
stage serves every scan). Handles are host arrays. After each run the compiled stage releases its
intermediate buffers, so only one stage's working memory is held at a time. ``bf16`` sets
OpenVINO's inference precision hint: convolutions in bfloat16 on CPUs with AVX512-BF16 or AMX,
inputs, outputs and accumulation in float32.
"""

from __future__ import annotations

import numpy as np
import onnx

from morphometry.errors import InputError, ModelError
from morphometry.heap import release_free_heap
from morphometry.segment.upsample_fusion import fuse_upsampling

PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16"}


def openvino_module():
    """The openvino module, or a one-line ModelError naming what to install."""
    try:
        import openvino
    except ImportError:
        raise ModelError("OpenVINO is not installed: pip install 'morphometry-mri[cpu]' (or pip install openvino)",
                         setting="engine") from None
    return openvino


def openvino_installed() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def cpu_has_bf16() -> bool:
    """True when OpenVINO's CPU plugin has bfloat16 kernels here (AVX512-BF16 or AMX)."""
    ov = openvino_module()
    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


class OpenVinoBackend:
    """Compiled stage graphs on the CPU; ``threads`` 0 = OpenVINO's default (all cores)."""

    name = "openvino"
    device = "cpu"

    def __init__(self, threads: int, precision: str):
        ov = openvino_module()
        if precision not in PRECISION_HINTS:
            raise InputError(f"{precision!r} is not available with OpenVINO (choose {', '.join(PRECISION_HINTS)})",
                             setting="precision")
        if precision == "bf16" and not cpu_has_bf16():
            raise InputError("bf16 needs a CPU with AVX512-BF16 or AMX instructions; this one has neither "
                             "(use fp32)", setting="precision")
        self._core = ov.Core()
        self._config = {"INFERENCE_PRECISION_HINT": PRECISION_HINTS[precision], "PERFORMANCE_HINT": "LATENCY",
                        "NUM_STREAMS": 1}
        if threads:
            self._config["INFERENCE_NUM_THREADS"] = threads
        self._compiled: dict = {}
        self._requests: dict = {}

    def compile(self, name: str, model: onnx.ModelProto) -> None:
        try:
            graph = self._core.read_model(fuse_upsampling(model).SerializeToString())
            self._compiled[name] = self._core.compile_model(graph, "CPU", self._config)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"OpenVINO cannot compile stage {name}: {first}", setting="engine") from None

    @staticmethod
    def upload(array: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(array, dtype=np.float32)

    def run(self, name: str, feeds: dict) -> np.ndarray:
        """Run one stage; a volume output (N, C, X, Y, Z) is written straight into a new host array."""
        ov = openvino_module()
        compiled = self._compiled[name]
        request = compiled.create_infer_request()
        shape = compiled.output(0).get_partial_shape()
        output = None
        if shape.rank.get_length() == 5 and shape[1].is_static:
            spatial = next(iter(feeds.values())).shape[2:]
            output = np.empty((1, shape[1].get_length(), *spatial), dtype=np.float32)
            request.set_output_tensor(0, ov.Tensor(output, shared_memory=True))
        results = request.infer(feeds, share_inputs=True, share_outputs=True)  # no copies in or out
        if output is None:
            output = results[0].copy()
        del request
        compiled.release_memory()
        return output

    def infer(self, name: str, feeds: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        """Run a compiled graph on host arrays (read in place); return the named outputs as views
        of the request's buffers, valid until the next call (copying them cost a tenth of the
        slab-wise networks' time at 1 mm). The graph's request and its buffers are kept for its
        next call until :meth:`release` or until another graph runs: one graph's buffers are held
        at a time."""
        for held in [n for n in self._requests if n != name]:
            self.release(held)
        request = self._requests.get(name)
        if request is None:
            request = self._requests[name] = self._compiled[name].create_infer_request()
        results = request.infer(feeds, share_inputs=True, share_outputs=True)  # no copies in or out
        return [results[out] for out in outputs]

    def release(self, name: str) -> None:
        """Free the request and the buffers of a graph run with :meth:`infer` (and the heap
        memory they leave, 0.5 GB between two networks at 1 mm)."""
        self._requests.pop(name, None)
        self._compiled[name].release_memory()
        release_free_heap()

    @staticmethod
    def host(handle: np.ndarray) -> np.ndarray:
        return handle

    def versions(self) -> dict:
        ov = openvino_module()
        return {"openvino": ov.__version__}
