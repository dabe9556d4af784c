"""The ONNX Runtime engine: stage graphs as InferenceSessions on the CPU or a CUDA GPU.

Stages run with I/O binding: the image is uploaded once per scan, each stage's output stays an
OrtValue on the device and is bound as the next stage's input, and only what the caller asks for
is copied to the host.
"""

from __future__ import annotations

import numpy as np
import onnx

from morphometry.errors import InputError, ModelError

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def onnxruntime_module():
    """The onnxruntime module, or a one-line ModelError naming what to install."""
    try:
        import onnxruntime
    except ImportError:
        raise ModelError("ONNX Runtime is not installed: pip install 'morphometry-mri[cpu]' "
                         "(or 'morphometry-mri[gpu]' on a CUDA machine)", setting="engine") from None
    return onnxruntime


def cuda_works() -> bool:
    """True when ONNX Runtime's CUDA provider is built in *and* starts (its libraries load) here."""
    from onnx import TensorProto, helper

    try:
        import onnxruntime as ort
    except ImportError:
        return False
    if PROVIDERS["cuda"] not in ort.get_available_providers():
        return False
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in ("x", "y")]
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", io[:1], io[1:])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    try:
        session = ort.InferenceSession(model.SerializeToString(), providers=[PROVIDERS["cuda"], PROVIDERS["cpu"]])
    except Exception:  # a provider that fails to load raises many types
        return False
    return session.get_providers()[0] == PROVIDERS["cuda"]


def _to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        from onnxconverter_common import float16
    except ImportError:
        raise InputError("needs onnxconverter-common (pip install 'morphometry-mri[gpu]')",
                         setting="precision") from None
    return float16.convert_float_to_float16(model, keep_io_types=True)


class OrtBackend:
    """Sessions of stage graphs on ``device`` (``cpu`` or ``cuda``); handles are OrtValues."""

    name = "onnxruntime"

    def __init__(self, device: str, threads: int, precision: str, device_id: int = 0):
        ort = onnxruntime_module()
        self.device, self.device_id, self.precision = device, device_id, precision
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Without the arena each run returns its memory: several stage sessions would otherwise each
        # keep the peak of their largest run (GBs per session for a padded 1 mm head with 33 labels).
        options.enable_cpu_mem_arena = False
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self._options = options
        self._providers = ([(PROVIDERS["cuda"], {"device_id": device_id}), PROVIDERS["cpu"]]
                           if device == "cuda" else [PROVIDERS["cpu"]])
        self._sessions: dict = {}

    def compile(self, name: str, model: onnx.ModelProto) -> None:
        import onnxruntime as ort

        if self.precision == "fp16":
            model = _to_fp16(model)
        self._sessions[name] = ort.InferenceSession(model.SerializeToString(), self._options,
                                                    providers=self._providers)

    def upload(self, array: np.ndarray):
        import onnxruntime as ort

        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self.device, self.device_id)

    def run(self, name: str, feeds: dict):
        """Run one stage; its single output stays on the device."""
        session = self._sessions[name]
        binding = session.io_binding()
        for key, value in feeds.items():
            binding.bind_ortvalue_input(key, value)
        binding.bind_output(session.get_outputs()[0].name, self.device, self.device_id)
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        return binding.get_outputs()[0]

    def infer(self, name: str, feeds: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        """Run a compiled graph on host arrays; return the named outputs as host arrays."""
        return self._sessions[name].run(outputs, feeds)

    def release(self, name: str) -> None:
        """Nothing to do: without the arena a session returns its memory after each run."""

    @staticmethod
    def host(handle) -> np.ndarray:
        return handle.numpy()

    def versions(self) -> dict:
        import onnxruntime as ort

        return {"onnxruntime": ort.__version__, "providers": ort.get_available_providers()}
