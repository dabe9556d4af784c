"""morphometry: SynthSeg+ segmentation of clinical brain MRI and population analyses of volumes.

The Python API, loaded on first use so that ``import morphometry`` stays light (no ONNX Runtime,
matplotlib or SimpleITK until a name that needs them is used)::

    from morphometry import Segmenter, fit_ageing, evaluate, silver, report

- :class:`Segmenter`: segment one scan (``.segment``) or a batch into a folder (``.segment_many``);
- :func:`fit_ageing`: ageing trajectories per structure and method (:class:`AgeingFit`);
- :func:`evaluate` and :func:`silver`: Dice and surface distances against silver standards;
- :func:`report`: the HTML report from results objects or output folders;
- :func:`simulate_cohort` and :func:`run_demo`: data with a known answer, and the whole chain on it.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_API = {
    "Segmenter": "morphometry.segment.segmenter",
    "Segmentation": "morphometry.segment.segmenter",
    "BatchResult": "morphometry.segment.segmenter",
    "merge": "morphometry.segment.segmenter",
    "fit_ageing": "morphometry.analysis.ageing_api",
    "AgeingFit": "morphometry.analysis.ageing_model",
    "AgeingSpec": "morphometry.analysis.ageing_model",
    "AgeingModel": "morphometry.analysis.ageing_model",
    "AgeingBootstrap": "morphometry.analysis.ageing_bootstrap",
    "fit_norms": "morphometry.analysis.norms_api",
    "score_norms": "morphometry.analysis.norms_api",
    "NormsModel": "morphometry.analysis.norms_api",
    "NormsScores": "morphometry.analysis.norms_api",
    "evaluate": "morphometry.analysis.evaluation",
    "EvaluationResult": "morphometry.analysis.evaluation",
    "silver": "morphometry.analysis.silver",
    "SilverResult": "morphometry.analysis.silver",
    "report": "morphometry.reports.report",
    "simulate_cohort": "morphometry.segment.synthesis.cohort",
    "CohortConfig": "morphometry.segment.synthesis.cohort",
    "run_demo": "morphometry.demo",
    "DemoResult": "morphometry.demo",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'morphometry' has no attribute {name!r}")
    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
