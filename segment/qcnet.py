"""The SynthSeg QC regressor as an ONNX graph, built from Keras-layout weights.

Architecture (built in the original's ``SynthSeg/predict_synthseg.py``, ``build_model``): ``levels`` encoder levels; level l has
``features * multiplier**l`` channels C and runs ``conv_downarm_{l}_0`` (ReLU), ...,
``conv_downarm_{l}_{n-1}`` (linear), adds the shortcut ``expand_down_merge_{l}`` (a ReLU convolution
of the level's input from C_in to C channels), applies ReLU, batch normalisation (epsilon 1e-3) and
2x2x2 max pooling (also after the last level: the head's ``maxpool_{levels-1}``). The head is
``final_conv_0`` (ReLU, C -> n_outputs) and ``final_conv_1`` (ReLU, n_outputs -> n_outputs), and the
scores are the mean of ``final_conv_1`` over the three spatial axes. All convolutions are
``kernel``-wide, "same" zero padded, with bias.

Weights use the Keras layout and names without the ``qc_`` prefix: ``conv_downarm_{l}_{c}``,
``expand_down_merge_{l}``, ``final_conv_{i}`` -> (kernel (k, k, k, C_in, C_out), bias),
``bn_down_{l}`` -> (gamma, beta, moving_mean, moving_variance).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from morphometry.segment.networks import GraphBuilder, Weights, check_weights, make_model

QC_TAPS = ("bn_down", "maxpool", "final_conv_0", "final_conv_1")  # intermediate outputs on request


@dataclass(frozen=True)
class QCSpec:
    """Hyper-parameters of the QC regressor (defaults: the released SynthSeg 2.0 network)."""

    in_channels: int = 9
    n_outputs: int = 9
    features: int = 24
    levels: int = 4
    convs_per_level: int = 2
    kernel: int = 5
    multiplier: int = 2

    def width(self, level: int) -> int:
        return self.features * self.multiplier**level

    def layer_shapes(self) -> dict[str, tuple[tuple[int, ...], ...]]:
        """Expected Keras weight shapes by layer name (without prefix), in model order."""
        k, shapes, c_in = self.kernel, {}, self.in_channels

        def conv(name: str, cin: int, cout: int) -> None:
            shapes[name] = ((k, k, k, cin, cout), (cout,))

        for lev in range(self.levels):
            c = self.width(lev)
            conv(f"conv_downarm_{lev}_0", c_in, c)
            conv(f"expand_down_merge_{lev}", c_in, c)
            for i in range(1, self.convs_per_level):
                conv(f"conv_downarm_{lev}_{i}", c, c)
            shapes[f"bn_down_{lev}"] = ((c,),) * 4
            c_in = c
        conv("final_conv_0", c_in, self.n_outputs)
        conv("final_conv_1", self.n_outputs, self.n_outputs)
        return shapes

    def n_parameters(self) -> int:
        return sum(int(np.prod(s)) for arrays in self.layer_shapes().values() for s in arrays)


def add_qc(g: GraphBuilder, x: str, spec: QCSpec, weights: Weights) -> tuple[str, dict[str, str]]:
    """Append the regressor reading tensor ``x`` (N, C_in, X, Y, Z); return the scores (N, n_outputs)
    and the intermediate tensors named in QC_TAPS (the last level's batch norm and max pool)."""
    check_weights(spec, weights)
    t = x
    taps: dict[str, str] = {}
    for lev in range(spec.levels):
        shortcut = g.conv(t, f"expand_down_merge_{lev}", *weights[f"expand_down_merge_{lev}"], activation="relu")
        for c in range(spec.convs_per_level):
            last = c == spec.convs_per_level - 1
            t = g.conv(t, f"conv_downarm_{lev}_{c}", *weights[f"conv_downarm_{lev}_{c}"],
                       activation=None if last else "relu")
        t = g.op("Relu", [g.op("Add", [shortcut, t], f"res_down_merge_{lev}")], f"res_down_merge_act_{lev}")
        t = taps["bn_down"] = g.batch_norm(t, f"bn_down_{lev}", *weights[f"bn_down_{lev}"])
        t = taps["maxpool"] = g.max_pool(t, f"maxpool_{lev}")
    t = taps["final_conv_0"] = g.conv(t, "final_conv_0", *weights["final_conv_0"], activation="relu")
    t = taps["final_conv_1"] = g.conv(t, "final_conv_1", *weights["final_conv_1"], activation="relu")
    scores = g.op("ReduceMean", [t], "final_pred", axes=[2, 3, 4], keepdims=0)
    return scores, taps


def qc_model(spec: QCSpec, weights: Weights, taps: tuple[str, ...] = (), doc: str = "") -> onnx.ModelProto:
    """A standalone regressor: input ``input`` (N, C_in, X, Y, Z) -> ``scores`` (N, n_outputs); each
    name in ``taps`` (from QC_TAPS) adds that intermediate tensor as an output of the same name."""
    unknown = set(taps) - set(QC_TAPS)
    if unknown:
        raise ValueError(f"unknown QC taps {sorted(unknown)} (choose from {', '.join(QC_TAPS)})")
    g = GraphBuilder()
    scores, inner = add_qc(g, "input", spec, weights)
    outputs = {"scores": scores} | {name: inner[name] for name in taps}
    return make_model(g, {"input": spec.in_channels}, outputs, doc)
