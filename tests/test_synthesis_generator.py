"""Generative model: parameters inside their priors, GMM means without randomness, crops, flips,
targets, S2 tissue maps, reproducibility."""

from dataclasses import replace

import numpy as np
import pytest

from morphometry.errors import DataError, InputError
from morphometry.labels import SYNTHSEG_2
from morphometry.segment.synthesis.generation_labels import GENERATION_LABELS
from morphometry.segment.synthesis.generator import GeneratorConfig, SyntheticGenerator
from morphometry.segment.synthesis.priors import (
    BiasPriors,
    GeneratorPriors,
    GmmPriors,
    ResolutionPriors,
    SpatialPriors,
    TissueMapPriors,
    Uniform,
)


def toy_map(shape=(40, 44, 36)) -> np.ndarray:
    """Head-like map: skin/skull shells, CSF, left/right WM and cortex, ventricles, hippocampi,
    cerebellum (every tissue group present)."""
    grid = np.stack(np.meshgrid(*[np.arange(n) - (n - 1) / 2 for n in shape], indexing="ij"))
    r = np.sqrt(((grid / (np.array(shape)[:, None, None, None] / 2)) ** 2).sum(0))
    labels = np.zeros(shape, np.int16)
    left = grid[0] < 0
    labels[r < 0.95] = 511
    labels[r < 0.85] = 515
    labels[r < 0.75] = 24
    labels[r < 0.65] = np.where(left, 3, 42)[r < 0.65]
    labels[r < 0.5] = np.where(left, 2, 41)[r < 0.5]
    labels[(r < 0.2) & left] = 4
    labels[(r < 0.2) & ~left] = 43
    hippo = (np.abs(grid[0]) > 5) & (np.abs(grid[0]) < 9) & (np.abs(grid[1]) < 3) & (np.abs(grid[2]) < 3)
    labels[hippo & left] = 17
    labels[hippo & ~left] = 53
    cerebellum = (r < 0.6) & (grid[2] < -6) & (grid[1] < -4)
    labels[cerebellum & left] = 8
    labels[cerebellum & ~left] = 47
    return labels


def static_priors(**changes) -> GeneratorPriors:
    """All randomness off except the GMM means."""
    zero = Uniform(0.0, 0.0)
    priors = GeneratorPriors(
        spatial=SpatialPriors(rotation_deg=zero, scaling=Uniform(1.0, 1.0), shearing=zero, nonlin_std=zero),
        gmm=GmmPriors(stds=zero, p_background_zero=0.0, p_background_dark=0.0),
        bias=BiasPriors(probability=0.0), gamma=Uniform(1.0, 1.0),
        resolution=ResolutionPriors(p_full_resolution=1.0, sigma_at_1mm=0.0), p_flip=0.0)
    return replace(priors, **changes)


def test_sampled_parameters_stay_inside_priors():
    p = GeneratorPriors()
    gen = SyntheticGenerator([toy_map()], GeneratorConfig(target="s2", output_shape=(32, 32, 32)))
    rng = np.random.default_rng(0)
    for _ in range(12):
        s = gen.sample(rng)
        r = s.record
        d = r.deformation
        assert p.spatial.rotation_deg.contains(d.rotation_deg)
        assert p.spatial.scaling.contains(d.scaling) and p.spatial.shearing.contains(d.shearing)
        assert np.all(d.translation_mm == 0) and p.spatial.nonlin_std.contains(d.nonlin_std)
        assert d.velocity.shape == (2, 2, 2, 3)  # ceil(0.04 * n) control points, at least 2
        assert p.gmm.means.contains(r.gmm.means[1:]) and p.gmm.stds.contains(r.gmm.stds[1:])
        bg = {"zero": (0.0, 0.0), "dark": (15.0, 5.0), "sampled": (255.0, 50.0)}[r.gmm.background]
        assert r.gmm.means[0] <= bg[0] and r.gmm.stds[0] <= bg[1]
        assert r.bias.coefficients is None or (p.bias.std.contains(r.bias.std) and r.bias.coefficients.shape == (2, 2, 2))
        assert r.gamma > 0
        a = r.acquisition
        assert np.all((a.spacing >= 1) & (a.spacing <= 8)) and np.all((a.thickness >= 1) & (a.thickness <= a.spacing))
        nominal = np.where(a.thickness == 1, 0.5, 0.75 * a.thickness)
        assert np.all(np.abs(a.sigma / nominal - 1) <= 0.0301)
        assert all(0 <= o <= n - 32 for o, n in zip(r.crop_offset, toy_map().shape))
        assert r.noise_std == 0
        assert set(r.tissue_maps.operations) <= {"dilate", "erode", "keep"}
        assert s.image.shape == s.target.shape == (32, 32, 32) and s.tissue_maps.shape == (5, 32, 32, 32)
        assert set(np.unique(s.target)) <= set(SYNTHSEG_2.values.tolist())


def test_paper_priors_are_respected():
    p = GeneratorPriors.paper()
    gen = SyntheticGenerator([toy_map()], GeneratorConfig(target="s1", output_shape=None, priors=p))
    rng = np.random.default_rng(1)
    for _ in range(8):
        r = gen.sample(rng).record
        assert p.spatial.translation_mm.contains(r.deformation.translation_mm)
        assert r.deformation.nonlin_std ** 2 <= 1.5 and np.all(r.gmm.stds[1:] ** 2 <= 6.0)
        assert 0.9 <= r.gamma <= 1.1 and 0 <= r.noise_std <= 10 and np.all(r.acquisition.spacing <= 9)


def test_without_randomness_the_image_reproduces_the_gmm_means():
    labels = toy_map()
    gen = SyntheticGenerator([labels], GeneratorConfig(target="s1", output_shape=None, priors=static_priors()))
    s = gen.sample(np.random.default_rng(2))
    classes = GENERATION_LABELS.class_lut[labels]
    means = s.record.gmm.means[np.unique(classes)]
    lo, hi = means.min(), means.max()
    for c in np.unique(classes):
        expected = (s.record.gmm.means[c] - lo) / (hi - lo)
        np.testing.assert_allclose(s.image[classes == c], expected, atol=1e-5)
    # S1 targets: tissue groups of the 2.0 targets (morphometry.labels)
    group_of = dict(zip(SYNTHSEG_2.values.tolist(), SYNTHSEG_2.tissue_groups.tolist()))
    expected_groups = np.vectorize(lambda v: group_of[int(GENERATION_LABELS.target_lut[v])])(labels)
    np.testing.assert_array_equal(s.target, expected_groups)
    assert {group_of[17], group_of[4], group_of[24], group_of[8], group_of[10]} == {2, 3, 0, 4, 1}


def test_crop_takes_the_block_at_the_recorded_offset():
    labels = toy_map()
    gen = SyntheticGenerator([labels], GeneratorConfig(target="synthseg", output_shape=(24, 20, 30),
                                                      priors=static_priors()))
    s = gen.sample(np.random.default_rng(3))
    o = s.record.crop_offset
    block = labels[o[0]:o[0] + 24, o[1]:o[1] + 20, o[2]:o[2] + 30]
    np.testing.assert_array_equal(s.target, GENERATION_LABELS.target_lut[block])


def test_flip_mirrors_and_swaps_left_right_labels():
    labels = toy_map()
    gen = SyntheticGenerator([labels], GeneratorConfig(target="synthseg", output_shape=None,
                                                      priors=static_priors(p_flip=1.0)))
    s = gen.sample(np.random.default_rng(4))
    assert s.record.flipped
    mirrored = labels[::-1]
    assert np.all(s.target[mirrored == 17] == 53) and np.all(s.target[mirrored == 53] == 17)
    assert np.all(s.target[mirrored == 2] == 41) and np.all(s.target[mirrored == 24] == 24)
    assert np.all(s.target[mirrored == 511] == 0)


def test_s2_tissue_maps_follow_the_groups_and_their_corruption():
    labels = toy_map()
    tissue = TissueMapPriors(p_deform=0.0, p_dilate=1.0, p_erode=0.0)
    gen = SyntheticGenerator([labels], GeneratorConfig(target="s2", output_shape=None,
                                                      priors=static_priors(tissue_maps=tissue)))
    s = gen.sample(np.random.default_rng(5))
    groups = GENERATION_LABELS.group_lut[labels]
    assert s.record.tissue_maps.operations == ("dilate",) * 5 and s.record.tissue_maps.deformation is None
    for g in range(5):
        onehot = groups == g
        assert onehot.any()
        assert np.all(s.tissue_maps[g][onehot] == 1)  # dilation keeps the group
        assert s.tissue_maps[g].sum() > onehot.sum()  # and adds a rim
        assert set(np.unique(s.tissue_maps[g])) <= {0.0, 1.0}


def test_same_seed_gives_identical_samples():
    gen = SyntheticGenerator([toy_map(), toy_map()[::-1].copy()], GeneratorConfig(target="s2", output_shape=(32, 32, 32)))
    a, b = gen.sample(np.random.default_rng(7)), gen.sample(np.random.default_rng(7))
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.target, b.target)
    np.testing.assert_array_equal(a.tissue_maps, b.tissue_maps)
    c = gen.sample(np.random.default_rng(8))
    assert not np.array_equal(a.image, c.image)


def test_bad_configuration_is_refused():
    with pytest.raises(InputError, match="unknown generator target"):
        GeneratorConfig(target="s3")
    with pytest.raises(InputError, match="at least one label map"):
        SyntheticGenerator([])
    with pytest.raises(DataError, match="label map 1: label values not in the generation label table: 1000"):
        SyntheticGenerator([toy_map(), np.full((8, 8, 8), 1000, np.int16)])


def test_cross_dilation_and_erosion_match_scipy():
    from scipy import ndimage as ndi

    from morphometry.segment.synthesis.generator import dilate_cross

    mask = np.random.default_rng(9).uniform(size=(17, 15, 13)) > 0.7
    cross = ndi.generate_binary_structure(3, 1)
    np.testing.assert_array_equal(dilate_cross(mask), ndi.binary_dilation(mask, cross))
    np.testing.assert_array_equal(~dilate_cross(~mask), ndi.binary_erosion(mask, cross, border_value=1))
