"""Execution of method chains on an engine (ONNX Runtime or OpenVINO), intermediates kept in place.

Each stage graph (morphometry.segment.stages) is compiled once by the engine. Per scan the image
is uploaded once, each stage's output stays where the engine keeps it (on the GPU with ONNX
Runtime's CUDA provider) and is fed to the next stage, and only a method's final posteriors are
copied to the host.

Engines (``RuntimeConfig.engine``): ``onnxruntime`` (CPU or CUDA, precisions fp32 and, on CUDA,
fp16) and ``openvino`` (CPU, precisions fp32 and bf16); ``auto`` takes ONNX Runtime on a GPU and
OpenVINO on the CPU when it is installed (about twice ONNX Runtime's speed on the official
networks, with their upsampling fused: docs/benchmarks.md), else ONNX Runtime.

With slabs (``RuntimeConfig.slab``; by default with OpenVINO) the segmentation stages run instead
in slabs on host arrays (morphometry.segment.slabs): the same results in 2.4 GB (OpenVINO) or
2.2 GB (ONNX Runtime) per 1 mm head instead of 14.2 and 7.5 GB on whole graphs.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import onnx

from morphometry.errors import InputError, ModelError
from morphometry.heap import ordinary_pages, release_free_heap
from morphometry.segment import stages
from morphometry.segment.bundle import Bundle, require
from morphometry.segment.methods import STAGES, Method
from morphometry.segment.networks import UNetSpec, read_weights
from morphometry.segment.openvino_backend import OpenVinoBackend, openvino_installed
from morphometry.segment.ort_backend import OrtBackend, cuda_works
from morphometry.segment.slabs import STREAMED_STAGES, SlabPlan, SlabStages

DEVICES = ("auto", "cpu", "cuda")  # the choices of RuntimeConfig.device
ENGINES = ("auto", "onnxruntime", "openvino")  # the choices of RuntimeConfig.engine
PRECISIONS = ("fp32", "fp16", "bf16")  # the choices of RuntimeConfig.precision
AUTO_SLAB_ROWS = 16  # rows per slab when RuntimeConfig.slab is auto and the engine is OpenVINO
SCAN_PEAK_GB = {  # (engine, in slabs) -> peak resident GB of one synthseg+ scan at 1 mm (docs/benchmarks.md)
    ("onnxruntime", False): 7.5, ("onnxruntime", True): 2.3, ("openvino", False): 14.2, ("openvino", True): 2.5}


@dataclass(frozen=True)
class RuntimeConfig:
    """Where and how networks run."""

    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # intra-op threads on the CPU; 0 = the engine's default (all cores)
    precision: str = "fp32"  # fp32 | fp16 (CUDA, ONNX Runtime) | bf16 (CPU with AVX512-BF16/AMX, OpenVINO)
    engine: str = "auto"  # auto | onnxruntime | openvino
    device_id: int = 0
    slab: int | None = None  # rows of RAS axis 0 per slab (CPU); 0 = whole graphs; None = auto (resolve_slab)


def choose_device(config: RuntimeConfig) -> str:
    """``cuda`` or ``cpu`` for the requested device (auto: CUDA when it works here, except for
    OpenVINO, bf16 or slabs, which run on the CPU)."""
    if config.device not in DEVICES:
        raise InputError(f"{config.device!r}: choose {', '.join(DEVICES)}", setting="device")
    slab = config.slab or 0
    if slab < 0 or slab % 2:
        raise InputError(f"{slab}: rows per slab must be an even number (0: whole graphs)", setting="slab")
    if slab and config.device == "cuda":
        raise InputError("slabs are a CPU memory saving; on a GPU the whole graphs run (use slab 0)", setting="slab")
    cpu_only = config.engine == "openvino" or config.precision == "bf16" or slab > 0
    if config.device == "cuda" and cpu_only:
        what = "OpenVINO" if config.engine == "openvino" else "bf16"
        raise InputError(f"{what} runs on the CPU; use device cpu (or auto)", setting="device")
    has_cuda = config.device != "cpu" and not cpu_only and cuda_works()
    if config.device == "cuda" and not has_cuda:
        raise InputError("CUDA is not usable here (needs onnxruntime-gpu and the CUDA libraries, see README)",
                         setting="device")
    device = "cuda" if has_cuda else "cpu"
    if config.precision == "fp16" and device != "cuda":
        raise InputError("needs a CUDA device (float16 kernels are slow or missing on the CPU; on a CPU with "
                         "AVX512-BF16 or AMX use bf16)", setting="precision")
    return device


def choose_engine(config: RuntimeConfig, device: str) -> str:
    """``onnxruntime`` or ``openvino`` for ``config`` on ``device`` (module docstring)."""
    if config.engine not in ENGINES:
        raise InputError(f"{config.engine!r}: choose {', '.join(ENGINES)}", setting="engine")
    if config.precision not in PRECISIONS:
        raise InputError(f"{config.precision!r}: choose {', '.join(PRECISIONS)}", setting="precision")
    if config.engine != "auto":
        engine = config.engine
    else:
        engine = "openvino" if device == "cpu" and (openvino_installed() or config.precision == "bf16") \
            else "onnxruntime"
    if engine == "onnxruntime" and config.precision == "bf16":
        raise InputError("bf16 needs the openvino engine", setting="precision")
    return engine


def resolve_slab(config: RuntimeConfig, backend) -> int:
    """Rows per slab for ``config`` on ``backend``: as set, or for ``None`` (auto) 16 with OpenVINO
    (about 1.1 times its whole graphs' time, 0.2 times their peak memory) and 0 otherwise (ONNX Runtime:
    slabs take 0.3 times its memory but 1.2 times as long; GPUs run whole graphs). docs/benchmarks.md."""
    if config.slab is not None:
        return config.slab
    return AUTO_SLAB_ROWS if backend.name == "openvino" else 0


def make_backend(config: RuntimeConfig):
    """The engine's backend for ``config``: :class:`OrtBackend` or :class:`OpenVinoBackend`."""
    device = choose_device(config)
    if choose_engine(config, device) == "openvino":
        return OpenVinoBackend(config.threads, config.precision)
    return OrtBackend(device, config.threads, config.precision, config.device_id)


class Engine:
    """Runs a set of methods (and optional parcellation / QC) of one bundle on one scan at a time.

    ``flip``: the left-right test-time flip of the ``synthseg`` stage (off in the original's --fast).
    """

    def __init__(self, bundle: Bundle, methods: list[Method], config: RuntimeConfig = RuntimeConfig(),
                 parc: bool = False, qc: bool = False, flip: bool = True):
        self.bundle, self.methods, self.config, self.flip = bundle, methods, config, flip
        for method in methods:
            require(bundle, method.roles, f"method {method.name}")
        if parc:
            require(bundle, {"parc"}, "parcellation")
        if qc:
            require(bundle, {"qc"}, "QC")
        self.backend = make_backend(config)
        self.timings: dict[str, float] = defaultdict(float)
        chain_stages = sorted({s for m in methods for s in m.chain})
        self.slab = resolve_slab(config, self.backend)
        if config.slab is None and any(self._spec(STAGES[s][0]) is None for s in chain_stages):
            self.slab = 0  # auto: a network that cannot run in slabs runs whole, with the others
        self.slabs = None
        if self.slab:
            self.slabs = SlabStages(self.backend, {s: self._architecture(STAGES[s][0]) for s in chain_stages},
                                    SlabPlan(thickness=self.slab, host_threads=config.threads or os.cpu_count() or 1),
                                    self._flip_channels() if flip else None)
        else:
            for name in chain_stages:
                self.backend.compile(name, self._stage_model(name))
        if parc:
            self.backend.compile("parc", stages.parcellation_stage(self._network("parc")))
        if qc:
            self.backend.compile("qc", stages.qc_stage(self._network("qc")))
        release_free_heap()  # what compiling freed (about 0.3 GB for the official networks)

    @property
    def device(self) -> str:
        """``cpu`` or ``cuda``."""
        return self.backend.device

    @property
    def engine(self) -> str:
        """``onnxruntime`` or ``openvino``."""
        return self.backend.name

    @property
    def scan_peak_gb(self) -> float:
        """Memory (GB) to plan per scan in flight on the CPU: the measured peak of a 1 mm head
        (224 x 256 x 192 network grid, official networks) with this engine, whole or in slabs."""
        return SCAN_PEAK_GB[(self.engine, bool(self.slab))]

    def _network(self, role: str) -> onnx.ModelProto:
        try:
            return onnx.load(str(self.bundle.path(role)))
        except Exception as exc:
            raise ModelError(f"{self.bundle.path(role)}: cannot load network {role} ({type(exc).__name__})") from None

    def _spec(self, role: str) -> UNetSpec | None:
        """The U-Net of ``role`` as bundle.json describes it; None when it is no plain U-Net (no
        architecture record, or output channels re-ordered after the network)."""
        arch = self.bundle.networks[role].architecture
        if arch.get("network", "unet") != "unet" or not {"in_channels", "n_labels"} <= set(arch) \
                or "zero_channels" in arch:
            return None
        fields = {f.name for f in dataclasses.fields(UNetSpec)}
        return UNetSpec(**{k: v for k, v in arch.items() if k in fields})

    def _architecture(self, role: str) -> tuple[UNetSpec, dict]:
        """(spec, weights) of a U-Net of the bundle, for slab-wise evaluation."""
        spec = self._spec(role)
        if spec is None:
            raise ModelError(f"{self.bundle.path(role)}: network {role} is not a plain U-Net in bundle.json "
                             "(no architecture record, or re-ordered output channels); it cannot run in slabs "
                             "(use slab 0)", setting="slab")
        try:
            return spec, read_weights(self._network(role), spec)
        except ValueError as exc:
            raise ModelError(f"{self.bundle.path(role)}: {exc}; it cannot run in slabs (use slab 0)",
                             setting="slab") from None

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

    def _run(self, name: str, feeds: dict):
        """Run one stage graph; its output stays where the engine keeps it."""
        start = time.perf_counter()
        out = self.backend.run(name, feeds)
        self.timings[name] += time.perf_counter() - start
        return out

    def _run_slabs(self, name: str, image: np.ndarray, previous: np.ndarray | None, sink=None):
        """Run one stage in slabs on host arrays (its posteriors into ``sink`` when given)."""
        start = time.perf_counter()
        out = self.slabs.run(name, image, previous, sink)
        self.timings[name] += time.perf_counter() - start
        return out

    def _stage(self, stage: str, x, image: np.ndarray, previous, sink=None):
        if self.slabs:
            with ordinary_pages():  # slabs allocate large host arrays per slab (morphometry.heap)
                return self._run_slabs(stage, image, previous, sink)
        _, reads_image, reads_previous = STAGES[stage]
        feeds = {"image": x} if reads_image else {}
        if reads_previous:
            feeds["previous"] = previous
        return self._run(stage, feeds)

    def _device_handles(self, handles) -> tuple:
        """(image, posteriors) as the engine's tensors (slab results are host arrays)."""
        x, posteriors = handles
        if self.slabs:
            return self.upload(x), self.backend.upload(posteriors[None])
        return x, posteriors

    def upload(self, image: np.ndarray):
        """(X, Y, Z) float32 image -> engine tensor (1, 1, X, Y, Z)."""
        return self.backend.upload(np.asarray(image, dtype=np.float32)[None, None])

    def streams(self, method: Method) -> bool:
        """True when ``method``'s final posteriors can go slab by slab into a sink (see
        :meth:`segment`): slabs are on, its last stage has no whole-volume glue, and no later
        method of this engine continues from its output."""
        later = self.methods[self.methods.index(method) + 1:]
        return bool(self.slabs) and method.chain[-1] in STREAMED_STAGES and \
            not any(m.chain[: len(method.chain)] == method.chain for m in later)

    def segment(self, image: np.ndarray, sinks: dict | None = None) -> Iterator[tuple[Method, object, object]]:
        """Yield (method, device handles, host posteriors (C, X, Y, Z)) for every method.

        Results of shared chain prefixes are computed once; a stage's output is released as soon
        as the next stage has run on it, unless a later method starts from it. ``sinks``: method
        name -> a slab sink (morphometry.segment.slabs.Sink) for methods that :meth:`streams`: their
        posteriors go into it and it is yielded in their place, with no device handles.
        """
        sinks = sinks or {}
        for name in sinks:
            if not any(m.name == name and self.streams(m) for m in self.methods):
                raise ValueError(f"method {name} cannot stream its posteriors with this engine")
        x = image if self.slabs else self.upload(image)
        cache: dict[tuple[str, ...], object] = {}
        for i, method in enumerate(self.methods):
            later = self.methods[i + 1:]
            previous = None
            sink = sinks.get(method.name)
            for k, stage in enumerate(method.chain):
                key = method.chain[: k + 1]
                if key not in cache:
                    last = k == len(method.chain) - 1
                    cache[key] = self._stage(stage, x, image, previous, sink if last else None)
                previous = cache[key]
                for old in [c for c in cache if c != key and not any(m.chain[: len(c)] == c for m in later)]:
                    del cache[old]
            start = time.perf_counter()
            host = previous if self.slabs else self.backend.host(previous)[0]
            self.timings["download"] += time.perf_counter() - start
            if not any(m.chain[: len(method.chain)] == method.chain for m in later):
                del cache[method.chain]
            yield method, None if sink is not None else (x, previous), host

    def parcellate(self, handles) -> np.ndarray:
        """Parcellation posteriors (69, X, Y, Z) from the image and a method's device posteriors."""
        x, posteriors = self._device_handles(handles)
        return self.backend.host(self._run("parc", {"image": x, "previous": posteriors}))[0]

    def quality(self, handles) -> np.ndarray:
        """The 9 raw QC network outputs for a method's device posteriors."""
        return self.backend.host(self._run("qc", {"previous": self._device_handles(handles)[1]}))[0]
