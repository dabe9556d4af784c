"""Spatial deformation: analytic affine cases, interpolation, invertibility of the SVF transform."""

import numpy as np

from morphometry.segment.synthesis.priors import SpatialPriors, Uniform, UniformVariance
from morphometry.segment.synthesis.spatial import (
    DeformationParams,
    affine_matrix,
    integrate_velocity,
    interpolation_matrix,
    jacobian_determinant,
    resize_block,
    sample_deformation,
    source_coordinates,
    warp_image,
    warp_labels,
)


def params(rotation=(0, 0, 0), scaling=(1, 1, 1), shearing=(0,) * 6, translation=(0, 0, 0), velocity=None, std=0.0):
    v = np.zeros((2, 2, 2, 3), np.float32) if velocity is None else velocity
    return DeformationParams(np.array(rotation, float), np.array(scaling, float), np.array(shearing, float),
                             np.array(translation, float), std, v, 7)


def test_rotation_matrix_is_analytic():
    m = affine_matrix(params(rotation=(0, 0, 90)))
    np.testing.assert_allclose(m @ [1, 0, 0], [0, 1, 0], atol=1e-12)
    m = affine_matrix(params(rotation=(90, 0, 0)))
    np.testing.assert_allclose(m @ [0, 1, 0], [0, 0, 1], atol=1e-12)
    m = affine_matrix(params(rotation=(10, -20, 30)))
    np.testing.assert_allclose(m @ m.T, np.eye(3), atol=1e-12)
    assert np.isclose(np.linalg.det(m), 1.0)
    m = affine_matrix(params(scaling=(2, 3, 4), shearing=(0.1, 0, 0, 0, 0, 0)))
    np.testing.assert_allclose(m, [[2, 0.2, 0], [0, 3, 0], [0, 0, 4]])


def test_affine_source_coordinates_match_the_formula():
    shape = (21, 18, 25)
    p = params(rotation=(5, -7, 12), scaling=(1.1, 0.9, 1.05), shearing=(0.01, -0.01, 0.005, 0, 0.002, -0.003),
               translation=(2.0, -1.5, 3.0))
    coords = source_coordinates(p, shape, (10, 9, 8), (3, 4, 5))
    m = affine_matrix(p)
    c = (np.array(shape) - 1) / 2
    for x in [(0, 0, 0), (9, 8, 7), (4, 2, 6)]:
        full = np.array(x) + (3, 4, 5)
        expected = m @ (full - c) + c + p.translation_mm
        np.testing.assert_allclose(coords[(slice(None), *x)], expected, atol=1e-4)


def test_interpolation_matrix_is_exact_for_linear_functions():
    w = interpolation_matrix(7, 23)
    np.testing.assert_allclose(w.sum(1), 1, atol=1e-6)
    x = np.arange(7, dtype=float) * 2.5 + 1
    np.testing.assert_allclose(w @ x, np.linspace(1, 16, 23), atol=1e-5)
    f = np.add.outer(np.add.outer(np.arange(4.0), 2 * np.arange(5.0)), 3 * np.arange(6.0))
    out = resize_block(f, (10, 9, 11), (2, 1, 3), (5, 6, 4))
    i, j, k = np.meshgrid(np.arange(2, 7) * 3 / 9, np.arange(1, 7) * 4 / 8, np.arange(3, 7) * 5 / 10, indexing="ij")
    np.testing.assert_allclose(out, i + 2 * j + 3 * k, atol=1e-5)


def test_integer_translation_shifts_labels_exactly():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 9, (12, 13, 14)).astype(np.int16)
    moved = warp_labels(labels, source_coordinates(params(translation=(2, -1, 3)), labels.shape))
    np.testing.assert_array_equal(moved[:-2, 1:, :-3], labels[2:, :-1, 3:])
    image = rng.normal(size=labels.shape).astype(np.float32)
    np.testing.assert_allclose(warp_image(image, source_coordinates(params(), labels.shape)), image, atol=1e-4)


def _svf_only(std: float) -> SpatialPriors:
    return SpatialPriors(rotation_deg=Uniform(0, 0), scaling=Uniform(1, 1), shearing=Uniform(0, 0),
                         nonlin_std=Uniform(std, std))


def test_velocity_field_transform_has_a_positive_jacobian():
    shape = (64, 64, 64)
    rng = np.random.default_rng(1)
    identity = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"))
    for std in (4.0, 8.0):  # the prior's maximum, and twice that
        coords = source_coordinates(sample_deformation(rng, _svf_only(std), shape), shape)
        assert np.abs(coords - identity).max() > 5  # the field does deform
        assert jacobian_determinant(coords).min() > 0, f"folding at velocity std {std}"


def test_exp_of_minus_v_undoes_exp_of_v():
    shape = (64, 64, 64)
    # exact up to the coarse-grid discretisation of the integration (a few hundredths of a voxel)
    p = sample_deformation(np.random.default_rng(1), _svf_only(1.0), shape)
    inverse = DeformationParams(p.rotation_deg, p.scaling, p.shearing, p.translation_mm, p.nonlin_std,
                                -p.velocity, p.integration_steps)
    coords, back = source_coordinates(p, shape), source_coordinates(inverse, shape)
    composed = np.stack([warp_image(back[a], coords) for a in range(3)])
    identity = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"))
    interior = (slice(None), slice(8, -8), slice(8, -8), slice(8, -8))
    assert np.abs(coords - identity).max() > 1.5
    assert np.abs(composed - identity)[interior].max() < 0.15


def test_svf_units_follow_the_half_resolution_convention():
    # a constant velocity integrates to the same constant displacement (exp of a translation)
    shape = (40, 40, 40)
    v = np.zeros((2, 2, 2, 3), np.float32)
    v[..., 1] = 1.5
    disp = integrate_velocity(params(velocity=v, std=1.0), shape)
    np.testing.assert_allclose(disp[..., 1], 1.5, atol=1e-4)
    np.testing.assert_allclose(disp[..., 0], 0, atol=1e-6)


def test_degradation_spatial_prior_reads_variances():
    prior = UniformVariance(4.0)
    draws = prior.sample(np.random.default_rng(2), 4000)
    assert prior.contains(draws) and draws.max() <= 2.0
    assert abs(np.mean(draws**2) - 2.0) < 0.1  # the variance is uniform on [0, 4]
