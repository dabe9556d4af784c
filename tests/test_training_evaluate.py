"""Model-card evaluation: Dice, synthetic scan rendering, conditions."""

from __future__ import annotations

import numpy as np
import pytest
from test_training_data import phantom_labels

from morphometry.segment.training.evaluate import (
    Condition,
    EvaluationConfig,
    dice_per_channel,
    render_scan,
    summary_table,
)


def test_dice_per_channel_against_set_counts():
    rng = np.random.default_rng(0)
    pred, truth = rng.integers(0, 4, (10, 9, 8)), rng.integers(0, 4, (10, 9, 8))
    got = dice_per_channel(pred, truth, 5)
    for c in range(4):
        a, b = pred == c, truth == c
        assert got[c] == pytest.approx(2 * (a & b).sum() / (a.sum() + b.sum()))
    assert np.isnan(got[4])


def test_conditions_cover_the_model_card_grid():
    names = [c.name for c in EvaluationConfig().conditions()]
    assert len(names) == 15 and "t2-9mm" in names and "random-1mm" in names and "t1-3mm-lowsnr" in names


def test_render_scan_is_seeded_normalised_and_slice_thick():
    labels = phantom_labels(40)
    a = render_scan(labels, 1.0, Condition("t1", 6.0, 0.0), np.random.default_rng(3))
    b = render_scan(labels, 1.0, Condition("t1", 6.0, 0.0), np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    assert a.shape == labels.shape and 0 <= a.min() and a.max() <= 1
    # without noise, a 6 mm scan is piecewise linear between slices along exactly one axis:
    # its second differences vanish between slices there and not along the other axes
    second = [np.abs(np.diff(a, 2, axis=k)).mean() for k in range(3)]
    assert min(second) < 0.2 * sorted(second)[1]


def test_low_snr_has_less_contrast():
    labels = phantom_labels(40)
    wm, gm = np.isin(labels, (2, 41)), np.isin(labels, (3, 42))
    gaps = []
    for factor in (1.0, 0.4):
        scan = render_scan(labels, 1.0, Condition("t1", 1.0, 0.0, factor), np.random.default_rng(1))
        gaps.append(abs(scan[wm].mean() - scan[gm].mean()))
    assert gaps[1] < 0.7 * gaps[0]


def test_summary_table():
    result = {"conditions": ["t1-1mm"], "mean_dice": {"synthseg+": {"t1-1mm": 0.5}, "synthseg": {"t1-1mm": 0.25}},
              "s1_mean_tissue_dice": {"t1-1mm": 0.75}}
    lines = summary_table(result).splitlines()
    assert lines[0] == "| scans | synthseg+ | synthseg | S1 tissue |"
    assert lines[2] == "| t1-1mm | 0.500 | 0.250 | 0.750 |"


def test_brain_box_keeps_the_brain_and_a_margin():
    from morphometry.segment.training.data import brain_box

    labels = np.zeros((30, 30, 30), np.int32)
    labels[5:25, 5:25, 5:25] = 511  # skin: not a brain structure
    labels[10:15, 12:20, 14:16] = 2
    box = brain_box(labels, 3)
    assert box == (slice(7, 18), slice(9, 23), slice(11, 19))


def test_structure_table_averages_conditions_and_skips_missing():
    from morphometry.segment.training.evaluate import structure_table

    result = {"structures": ["a", "b"], "dice": {"s1+s2": {"c1": [0.5, None], "c2": [0.7, 0.4]}}}
    lines = structure_table(result).splitlines()
    assert lines[2] == "| a | 0.600 |" and lines[3] == "| b | 0.400 |"
