"""Degradation model of D's training pairs: wider priors, joint deformation, errors."""

from dataclasses import replace

import numpy as np
import pytest

from morphometry.errors import InputError
from morphometry.segment.synthesis.degradation import degrade
from morphometry.segment.synthesis.generation_labels import GENERATION_LABELS
from morphometry.segment.synthesis.priors import BiasPriors, DegradationPriors, ResolutionPriors, SpatialPriors, Uniform
from tests.test_synthesis_generator import toy_map


def pair(shape=(36, 40, 32)):
    groups = GENERATION_LABELS.group_lut[toy_map(shape)].astype(np.int16)
    image = (groups * 40.0 + 10).astype(np.float32)
    return image, groups


def test_degradation_parameters_stay_inside_the_wider_priors():
    p = DegradationPriors()
    image, groups = pair()
    rng = np.random.default_rng(0)
    for _ in range(10):
        out = degrade(image, groups, rng, p)
        r = out.record
        d = r.deformation
        assert np.all(np.abs(d.rotation_deg) <= 25) and np.all((d.scaling >= 0.5) & (d.scaling <= 1.5))
        assert np.all(np.abs(d.shearing) <= 0.02) and np.all(np.abs(d.translation_mm) <= 50)
        assert d.nonlin_std ** 2 <= 4.0
        assert r.bias.coefficients is None or r.bias.std ** 2 <= 3.0
        assert 0.3 <= r.gamma <= 3.0 and 0 <= r.noise_std <= 50
        assert np.all(r.acquisition.spacing <= 12) and np.all(r.acquisition.thickness <= r.acquisition.spacing)
        assert out.image.shape == image.shape and out.labels.shape == groups.shape
        assert out.image.dtype == np.float32 and set(np.unique(out.labels)) <= {0, 1, 2, 3, 4}


def test_image_and_labels_are_deformed_jointly():
    image, groups = pair((48, 52, 44))
    quiet = DegradationPriors(
        spatial=SpatialPriors(rotation_deg=Uniform(-20, 20), scaling=Uniform(0.9, 1.1), shearing=Uniform(0, 0),
                              translation_mm=Uniform(-3, 3), nonlin_std=Uniform(0, 2)),
        bias=BiasPriors(probability=0.0), gamma=Uniform(1, 1),
        resolution=ResolutionPriors(p_full_resolution=1.0, sigma_at_1mm=0.0), p_noise=0.0, p_invert=0.0)
    out = degrade(image, groups, np.random.default_rng(1), quiet)
    # with only the deformation left, each label's interior is one grey level, ordered as the groups
    from scipy import ndimage as ndi
    edge = ndi.morphological_gradient(out.labels, size=3) > 0
    levels = []
    for g in range(5):
        inside = (out.labels == g) & ~edge
        if inside.any():
            assert np.ptp(out.image[inside]) < 1e-4
            levels.append(out.image[inside].mean())
    assert len(levels) >= 4 and np.all(np.diff(levels) > 0)
    assert out.image.min() >= 0 and out.image.max() <= 1


def test_contrast_inversion_and_flip_are_recorded():
    image, groups = pair()
    p = replace(DegradationPriors(), p_invert=1.0, p_flip=1.0)
    out = degrade(image, groups, np.random.default_rng(2), p)
    assert out.record.inverted and out.record.flipped


def test_same_seed_same_pair():
    image, groups = pair()
    a = degrade(image, groups, np.random.default_rng(5))
    b = degrade(image, groups, np.random.default_rng(5))
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.labels, b.labels)


def test_bad_inputs_are_refused():
    image, groups = pair()
    with pytest.raises(InputError, match="same shape"):
        degrade(image, groups[:-1], np.random.default_rng(0))
    bad = image.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="finite"):
        degrade(bad, groups, np.random.default_rng(0))
