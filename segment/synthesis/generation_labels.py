"""The 54 generation labels of the training label maps (``generation_labels.npy``, ``generation_classes.npy``).

Each label has a generation class (labels of one class share a Gaussian), a SynthSeg 2.0 target
label (FreeSurfer value among the 33 of ``morphometry.labels.SYNTHSEG_2``) and, through the target,
an S1/D tissue group (0 background/CSF, 1 white matter and deep grey, 2 cortex/hippocampus/amygdala,
3 ventricles, 4 cerebellum). The order is 18 neutral, 18 left, then the 18 matching right labels,
which defines the left/right swap of a flip.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from morphometry.labels import SYNTHSEG_2

# (label, generation class, 2.0 target), in the order of generation_labels.npy
_ROWS = (
    (0, 0, 0), (14, 1, 14), (15, 2, 15), (16, 3, 16), (24, 4, 24), (72, 5, 0), (85, 6, 0),
    (502, 7, 0), (506, 8, 0), (507, 9, 0), (508, 10, 0), (509, 11, 0), (511, 12, 0), (512, 13, 0),
    (514, 14, 0), (515, 15, 0), (516, 16, 0), (530, 17, 0),
    (2, 18, 2), (3, 19, 3), (4, 20, 4), (5, 20, 5), (7, 21, 7), (8, 22, 8), (10, 23, 10),
    (11, 24, 11), (12, 25, 12), (13, 26, 13), (17, 27, 17), (18, 27, 18), (25, 28, 2), (26, 29, 26),
    (28, 30, 28), (30, 31, 0), (136, 32, 4), (137, 32, 5),
    (41, 33, 41), (42, 34, 42), (43, 35, 43), (44, 35, 44), (46, 36, 46), (47, 37, 47), (49, 38, 49),
    (50, 39, 50), (51, 40, 51), (52, 41, 52), (53, 42, 53), (54, 42, 54), (57, 43, 41), (58, 44, 58),
    (60, 45, 60), (62, 46, 0), (163, 47, 43), (164, 47, 44),
)
N_NEUTRAL = 18

# Extra-cerebral values used by the default anatomy's layers (in the repository's maps 515 is the
# layer around the CSF, 507 the large soft-tissue layer and 511 the layer touching the air).
SKULL, SOFT_TISSUE, SKIN = 515, 507, 511


@dataclass(frozen=True)
class GenerationLabels:
    """Lookup tables from label values (any int up to ``max_value``) to classes and targets."""

    values: tuple[int, ...]
    classes: tuple[int, ...]
    targets: tuple[int, ...]
    n_neutral: int

    @property
    def n_classes(self) -> int:
        return max(self.classes) + 1

    @cached_property
    def max_value(self) -> int:
        return max(self.values)

    def _lut(self, items) -> np.ndarray:
        lut = np.full(self.max_value + 1, -1, dtype=np.int32)
        lut[list(self.values)] = items
        return lut

    @cached_property
    def class_lut(self) -> np.ndarray:
        return self._lut(self.classes)

    @cached_property
    def target_lut(self) -> np.ndarray:
        return self._lut(self.targets)

    @cached_property
    def group_lut(self) -> np.ndarray:
        """Label value -> tissue group (0..4) of its 2.0 target."""
        group_of_target = dict(zip(SYNTHSEG_2.values.tolist(), SYNTHSEG_2.tissue_groups.tolist()))
        return self._lut([group_of_target[t] for t in self.targets])

    @cached_property
    def flip_lut(self) -> np.ndarray:
        """Label value -> its left/right homologue (neutral labels unchanged)."""
        n_side = (len(self.values) - self.n_neutral) // 2
        swapped = list(self.values[: self.n_neutral])
        swapped += list(self.values[self.n_neutral + n_side:]) + list(self.values[self.n_neutral: self.n_neutral + n_side])
        return self._lut(swapped)

    def unknown_values(self, present: np.ndarray) -> list[int]:
        """Values of ``present`` that are not generation labels."""
        present = np.asarray(present, dtype=np.int64)
        known = np.isin(present, np.array(self.values))
        return sorted(int(v) for v in present[~known])


GENERATION_LABELS = GenerationLabels(
    values=tuple(r[0] for r in _ROWS), classes=tuple(r[1] for r in _ROWS),
    targets=tuple(r[2] for r in _ROWS), n_neutral=N_NEUTRAL,
)
