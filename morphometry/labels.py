"""Label tables of SynthSeg 2.0 / SynthSeg+ as code.

Values, orders and groupings come from the original label files (``data/labels_classes_priors/*.npy``):
the 33 segmentation labels in posterior (ascending label value) order, the 5 tissue groups used by
S1 and D, the topology classes of the connected-component clean-up, the left/right pairs, the 9 QC
groups and the 68 cortical parcels. Column names in tables are the stable snake_case ``name``s.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np


@dataclass(frozen=True)
class Label:
    """One segmentation label: FreeSurfer ``value`` and its per-label properties."""

    value: int
    name: str  # stable snake_case column name
    freesurfer_name: str  # name as written by the original software
    side: str  # "left" | "right" | "neutral"
    topology_class: int
    tissue_group: int
    qc_group: int


# value, snake_case name, original name, topology class, tissue group, QC group
_SEGMENTATION_ROWS = [
    (0, "background", "background", 0, 0, 0),
    (2, "left_cerebral_white_matter", "left cerebral white matter", 4, 1, 1),
    (3, "left_cerebral_cortex", "left cerebral cortex", 4, 2, 2),
    (4, "left_lateral_ventricle", "left lateral ventricle", 4, 3, 3),
    (5, "left_inferior_lateral_ventricle", "left inferior lateral ventricle", 4, 3, 3),
    (7, "left_cerebellum_white_matter", "left cerebellum white matter", 5, 4, 4),
    (8, "left_cerebellum_cortex", "left cerebellum cortex", 5, 4, 4),
    (10, "left_thalamus", "left thalamus", 6, 1, 6),
    (11, "left_caudate", "left caudate", 7, 1, 1),
    (12, "left_putamen", "left putamen", 8, 1, 7),
    (13, "left_pallidum", "left pallidum", 9, 1, 7),
    (14, "third_ventricle", "3rd ventricle", 1, 3, 3),
    (15, "fourth_ventricle", "4th ventricle", 2, 3, 3),
    (16, "brain_stem", "brain-stem", 3, 1, 5),
    (17, "left_hippocampus", "left hippocampus", 10, 2, 8),
    (18, "left_amygdala", "left amygdala", 11, 2, 8),
    (24, "csf", "csf", 0, 0, 0),
    (26, "left_accumbens_area", "left accumbens area", 12, 1, 1),
    (28, "left_ventral_dc", "left ventral DC", 13, 1, 1),
    (41, "right_cerebral_white_matter", "right cerebral white matter", 14, 1, 1),
    (42, "right_cerebral_cortex", "right cerebral cortex", 14, 2, 2),
    (43, "right_lateral_ventricle", "right lateral ventricle", 14, 3, 3),
    (44, "right_inferior_lateral_ventricle", "right inferior lateral ventricle", 14, 3, 3),
    (46, "right_cerebellum_white_matter", "right cerebellum white matter", 15, 4, 4),
    (47, "right_cerebellum_cortex", "right cerebellum cortex", 15, 4, 4),
    (49, "right_thalamus", "right thalamus", 16, 1, 6),
    (50, "right_caudate", "right caudate", 17, 1, 1),
    (51, "right_putamen", "right putamen", 18, 1, 7),
    (52, "right_pallidum", "right pallidum", 19, 1, 7),
    (53, "right_hippocampus", "right hippocampus", 20, 2, 8),
    (54, "right_amygdala", "right amygdala", 21, 2, 8),
    (58, "right_accumbens_area", "right accumbens area", 22, 1, 1),
    (60, "right_ventral_dc", "right ventral DC", 23, 1, 1),
]


def _side(name: str) -> str:
    if name.startswith("left_"):
        return "left"
    if name.startswith("right_"):
        return "right"
    return "neutral"


SEGMENTATION_LABELS: tuple[Label, ...] = tuple(
    Label(v, n, fs, _side(n), topo, grp, qc) for v, n, fs, topo, grp, qc in _SEGMENTATION_ROWS
)

TOTAL_INTRACRANIAL = "total_intracranial"

TISSUE_GROUPS: tuple[str, ...] = ("background", "white_matter", "grey_matter", "fluids", "cerebellum")

QC_GROUPS: tuple[str, ...] = (
    "background",
    "general_white_matter",
    "general_grey_matter",
    "general_csf",
    "cerebellum",
    "brainstem",
    "thalamus",
    "putamen_pallidum",
    "hippocampus_amygdala",
)

_PARCEL_SUFFIXES = (
    "bankssts", "caudalanteriorcingulate", "caudalmiddlefrontal", "cuneus", "entorhinal",
    "fusiform", "inferiorparietal", "inferiortemporal", "isthmuscingulate", "lateraloccipital",
    "lateralorbitofrontal", "lingual", "medialorbitofrontal", "middletemporal", "parahippocampal",
    "paracentral", "parsopercularis", "parsorbitalis", "parstriangularis", "pericalcarine",
    "postcentral", "posteriorcingulate", "precentral", "precuneus", "rostralanteriorcingulate",
    "rostralmiddlefrontal", "superiorfrontal", "superiorparietal", "superiortemporal",
    "supramarginal", "frontalpole", "temporalpole", "transversetemporal", "insula",
)
_PARCEL_OFFSETS = (1, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22,
                   23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35)


@dataclass(frozen=True)
class Parcel:
    """One cortical parcel of the parcellation network (Desikan-Killiany, no 1004/2004)."""

    value: int
    name: str  # snake_case column name, e.g. ctx_lh_bankssts
    freesurfer_name: str  # e.g. ctx-lh-bankssts


PARCELLATION_LABELS: tuple[Parcel, ...] = tuple(
    Parcel(base + off, f"ctx_{hemi}_{suffix}", f"ctx-{hemi}-{suffix}")
    for base, hemi in ((1000, "lh"), (2000, "rh"))
    for off, suffix in zip(_PARCEL_OFFSETS, _PARCEL_SUFFIXES)
)


@dataclass(frozen=True)
class LabelSet:
    """An ordered list of output labels (channel i = ``labels[i]``) with derived lookups."""

    labels: tuple[Label, ...]

    @cached_property
    def values(self) -> np.ndarray:
        return np.array([lab.value for lab in self.labels], dtype=np.int32)

    @cached_property
    def names(self) -> tuple[str, ...]:
        return tuple(lab.name for lab in self.labels)

    @property
    def n_channels(self) -> int:
        return len(self.labels)

    def channel_of(self, value: int) -> int:
        return int(np.flatnonzero(self.values == value)[0])

    @cached_property
    def flip_channels(self) -> np.ndarray:
        """Channel i of a left-right flipped posterior is taken from channel ``flip[i]``."""
        by_name = {lab.name: i for i, lab in enumerate(self.labels)}
        flip = np.arange(self.n_channels)
        for i, lab in enumerate(self.labels):
            if lab.side == "left":
                flip[i] = by_name[lab.name.replace("left_", "right_", 1)]
            elif lab.side == "right":
                flip[i] = by_name[lab.name.replace("right_", "left_", 1)]
        return flip

    @cached_property
    def topology_classes(self) -> np.ndarray:
        return np.array([lab.topology_class for lab in self.labels], dtype=np.int32)

    @cached_property
    def tissue_groups(self) -> np.ndarray:
        return np.array([lab.tissue_group for lab in self.labels], dtype=np.int32)

    @cached_property
    def qc_groups(self) -> np.ndarray:
        return np.array([lab.qc_group for lab in self.labels], dtype=np.int32)


SYNTHSEG_2 = LabelSet(SEGMENTATION_LABELS)
"""The 33 labels of SynthSeg 2.0 / SynthSeg+ (S2 and the non-robust network)."""

SYNTHSEG_1 = LabelSet(tuple(lab for lab in SEGMENTATION_LABELS if lab.value != 24))
"""The 32 labels of SynthSeg 1.0 (no CSF)."""

STRUCTURES: tuple[str, ...] = tuple(lab.name for lab in SEGMENTATION_LABELS if lab.value != 0)
"""Volume columns of the VolumesTable (32 structures, posterior order)."""

LEFT_RIGHT_PAIRS: tuple[tuple[str, str], ...] = tuple(
    (lab.name, lab.name.replace("left_", "right_", 1)) for lab in SEGMENTATION_LABELS if lab.side == "left"
)


def bilateral_name(structure: str) -> str:
    """``left_hippocampus`` -> ``hippocampus``; neutral names are returned unchanged."""
    for prefix in ("left_", "right_"):
        if structure.startswith(prefix):
            return structure[len(prefix):]
    return structure


BILATERAL_STRUCTURES: dict[str, tuple[str, str]] = {bilateral_name(l): (l, r) for l, r in LEFT_RIGHT_PAIRS}
"""Summed structures as the paper plots them: ``hippocampus`` -> (left, right)."""


def label_set_for(values: list[int] | tuple[int, ...] | np.ndarray) -> LabelSet:
    """The LabelSet whose channels are the given FreeSurfer values (in that order)."""
    by_value = {lab.value: lab for lab in SEGMENTATION_LABELS}
    missing = [int(v) for v in values if int(v) not in by_value]
    if missing:
        raise ValueError(f"unknown segmentation label values: {missing}")
    return LabelSet(tuple(by_value[int(v)] for v in values))
