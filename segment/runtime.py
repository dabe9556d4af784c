"""ONNX Runtime execution of method chains, with intermediates kept on the device.

Each stage graph (morphometry.segment.stages) gets one InferenceSession. Stages are run with I/O binding: the
image is uploaded once per scan, each stage's output stays an OrtValue on the device and is bound
as the next stage's input, and only a method's final posteriors are copied to the host.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import onnx

from morphometry.errors import InputError, ModelError
from morphometry.segment import stages
from morphometry.segment.bundle import Bundle, require
from morphometry.segment.methods import STAGES, Method

DEVICES = ("auto", "cpu", "cuda")  # the choices of RuntimeConfig.device


@dataclass(frozen=True)
class RuntimeConfig:
    """Where and how networks run."""

    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # intra-op threads on the CPU; 0 = ONNX Runtime's default (all cores)
    fp16: bool = False  # convert networks to float16 (CUDA only)
    device_id: int = 0


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise ModelError("ONNX Runtime is not installed: pip install 'morphometry-mri[cpu]' "
                         "(or 'morphometry-mri[gpu]' on a CUDA machine)") from None
    return onnxruntime


def cuda_works() -> bool:
    """True when the CUDA provider is built in *and* starts (its libraries load) on this machine."""
    from onnx import TensorProto, helper

    ort = _onnxruntime()
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in ("x", "y")]
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", io[:1], io[1:])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    try:
        session = ort.InferenceSession(model.SerializeToString(),
                                       providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    except Exception:  # a provider that fails to load raises many types
        return False
    return session.get_providers()[0] == "CUDAExecutionProvider"


def choose_device(config: RuntimeConfig) -> str:
    """``cuda`` or ``cpu`` for the requested device (auto: CUDA when it works here)."""
    if config.device not in DEVICES:
        raise InputError(f"{config.device!r}: choose {', '.join(DEVICES)}", setting="device")
    has_cuda = config.device != "cpu" and cuda_works()
    if config.device == "cuda" and not has_cuda:
        raise InputError("CUDA is not usable here (needs onnxruntime-gpu and the CUDA libraries, see README)",
                         setting="device")
    device = "cuda" if has_cuda else "cpu"
    if config.fp16 and device != "cuda":
        raise InputError("needs a CUDA device (float16 kernels are slow or missing on the CPU)", setting="fp16")
    return device


def _to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        from onnxconverter_common import float16
    except ImportError:
        raise InputError("needs onnxconverter-common (pip install 'morphometry-mri[gpu]')", setting="fp16") from None
    return float16.convert_float_to_float16(model, keep_io_types=True)


class Engine:
    """Runs a set of methods (and optional parcellation / QC) of one bundle on one scan at a time.

    ``flip``: the left-right test-time flip of the ``synthseg`` stage (off in the original's --fast).
    """

    def __init__(self, bundle: Bundle, methods: list[Method], config: RuntimeConfig = RuntimeConfig(),
                 parc: bool = False, qc: bool = False, flip: bool = True):
        ort = _onnxruntime()

        self.bundle, self.methods, self.config, self.flip = bundle, methods, config, flip
        for method in methods:
            require(bundle, method.roles, f"method {method.name}")
        if parc:
            require(bundle, {"parc"}, "parcellation")
        if qc:
            require(bundle, {"qc"}, "QC")
        self.device = choose_device(config)
        self.timings: dict[str, float] = defaultdict(float)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Without the arena each run returns its memory: several stage sessions would otherwise each
        # keep the peak of their largest run (GBs per session for a padded 1 mm head with 33 labels).
        options.enable_cpu_mem_arena = False
        if config.threads:
            options.intra_op_num_threads = config.threads
            options.inter_op_num_threads = 1
        self._providers = (
            [("CUDAExecutionProvider", {"device_id": config.device_id}), "CPUExecutionProvider"]
            if self.device == "cuda" else ["CPUExecutionProvider"]
        )
        self._options = options
        needed = {s for m in methods for s in m.chain}
        self.sessions = {name: self._session(self._stage_model(name)) for name in needed}
        if parc:
            self.sessions["parc"] = self._session(stages.parcellation_stage(self._network("parc")))
        if qc:
            self.sessions["qc"] = self._session(stages.qc_stage(self._network("qc")))

    def _network(self, role: str) -> onnx.ModelProto:
        try:
            return onnx.load(str(self.bundle.path(role)))
        except Exception as exc:
            raise ModelError(f"{self.bundle.path(role)}: cannot load network {role} ({type(exc).__name__})") from None

    def _stage_model(self, stage: str) -> onnx.ModelProto:
        net = self._network(STAGES[stage][0])
        if stage == "s1":
            return stages.tissue_stage(net)
        if stage == "d":
            return stages.denoise_stage(net)
        if stage == "s2":
            return stages.s2_stage(net)
        if stage == "synthseg":
            return stages.synthseg_stage(net, self._flip_channels() if self.flip else None)
        return stages.relabel_stage(net)

    def _flip_channels(self) -> np.ndarray:
        from morphometry.labels import SYNTHSEG_2

        return SYNTHSEG_2.flip_channels

    def _session(self, model: onnx.ModelProto):
        import onnxruntime as ort

        if self.config.fp16:
            model = _to_fp16(model)
        return ort.InferenceSession(model.SerializeToString(), self._options, providers=self._providers)

    def _run(self, name: str, feeds: dict):
        """Run one stage with I/O binding; the single output stays on the device."""
        session = self.sessions[name]
        binding = session.io_binding()
        for key, value in feeds.items():
            binding.bind_ortvalue_input(key, value)
        binding.bind_output(session.get_outputs()[0].name, self.device, self.config.device_id)
        start = time.perf_counter()
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        self.timings[name] += time.perf_counter() - start
        return binding.get_outputs()[0]

    def upload(self, image: np.ndarray):
        """(X, Y, Z) float32 image -> device tensor (1, 1, X, Y, Z)."""
        import onnxruntime as ort

        array = np.ascontiguousarray(image[None, None], dtype=np.float32)
        return ort.OrtValue.ortvalue_from_numpy(array, self.device, self.config.device_id)

    def segment(self, image: np.ndarray) -> Iterator[tuple[Method, object, np.ndarray]]:
        """Yield (method, device posteriors, host posteriors (C, X, Y, Z)) for every method.

        Results of shared chain prefixes are computed once and released when no later method
        needs them.
        """
        x = self.upload(image)
        cache: dict[tuple[str, ...], object] = {}
        for i, method in enumerate(self.methods):
            previous = None
            for k, stage in enumerate(method.chain):
                key = method.chain[: k + 1]
                if key not in cache:
                    _, reads_image, reads_previous = STAGES[stage]
                    feeds = {}
                    if reads_image:
                        feeds["image"] = x
                    if reads_previous:
                        feeds["previous"] = previous
                    cache[key] = self._run(stage, feeds)
                previous = cache[key]
            start = time.perf_counter()
            host = previous.numpy()[0]
            self.timings["download"] += time.perf_counter() - start
            later = self.methods[i + 1:]
            for key in list(cache):
                if not any(m.chain[: len(key)] == key for m in later):
                    del cache[key]
            yield method, (x, previous), host

    def parcellate(self, handles) -> np.ndarray:
        """Parcellation posteriors (69, X, Y, Z) from the image and a method's device posteriors."""
        x, posteriors = handles
        return self._run("parc", {"image": x, "previous": posteriors}).numpy()[0]

    def quality(self, handles) -> np.ndarray:
        """The 9 raw QC network outputs for a method's device posteriors."""
        return self._run("qc", {"previous": handles[1]}).numpy()[0]
