"""Resolution simulation: blur width, slice grid, linear resampling, and the spacing/thickness
visible in generated images."""

import numpy as np

from morphometry.segment.synthesis.generator import GeneratorConfig, SyntheticGenerator
from morphometry.segment.synthesis.priors import GmmPriors, ResolutionPriors, Uniform
from morphometry.segment.synthesis.resolution import (
    AcquisitionParams,
    blur,
    lr_shape,
    sample_acquisition,
    subsample,
    upsample,
)
from tests.test_synthesis_generator import static_priors, toy_map


def lag1_correlation(x: np.ndarray, axis: int) -> float:
    x = x - x.mean()
    a = np.take(x, np.arange(x.shape[axis] - 1), axis=axis)
    b = np.take(x, np.arange(1, x.shape[axis]), axis=axis)
    return float((a * b).mean() / (x * x).mean())


def test_blur_of_white_noise_has_the_gaussian_autocorrelation():
    noise = np.random.default_rng(0).standard_normal((64, 64, 64)).astype(np.float32)
    sigma = 2.0
    out = blur(noise, np.array([0.0, sigma, 0.0]))[:, 16:-16]
    # Gaussian-filtered white noise: corr(lag 1) = exp(-1 / (4 sigma^2))
    assert abs(lag1_correlation(out, 1) - np.exp(-1 / (4 * sigma**2))) < 0.02
    assert abs(lag1_correlation(out, 0)) < 0.02 and abs(lag1_correlation(out, 2)) < 0.02


def test_slices_lie_at_multiples_of_the_spacing_and_linear_ramps_survive():
    shape = (30, 31, 29)
    spacing = np.array([1.0, 3.5, 1.0])
    ramp = np.broadcast_to(np.arange(31, dtype=np.float32)[None, :, None] * 0.7 + 2, shape).copy()
    low = subsample(ramp, spacing)
    assert low.shape == lr_shape(shape, spacing) == (30, 9, 29)  # 0, 3.5, ..., 28 mm
    np.testing.assert_allclose(low[0, :, 0], np.arange(9) * 3.5 * 0.7 + 2, atol=1e-5)
    back = upsample(low, spacing, shape)
    np.testing.assert_allclose(back[:, :29], ramp[:, :29], atol=1e-4)  # up to the last slice at 28 mm


def test_acquisition_sampler_follows_the_rules():
    priors = ResolutionPriors()
    rng = np.random.default_rng(1)
    draws = [sample_acquisition(rng, priors) for _ in range(2000)]
    n_aniso = sum(int(np.sum(d.spacing > 1) == 1) for d in draws)
    n_full = sum(int(np.all(d.spacing == 1)) for d in draws)
    assert 0.80 < n_aniso / 2000 < 0.90  # 0.9 * 0.95 anisotropic
    assert 0.03 < n_full / 2000 < 0.08  # 0.05 reset to 1 mm
    for d in draws:
        assert np.all((d.thickness >= 1) & (d.thickness <= d.spacing))


def _sample_with(spacing: float, axis: int, seed: int):
    res = ResolutionPriors(p_iso=0.0, aniso_spacing=Uniform(spacing, spacing), p_full_resolution=0.0)
    priors = static_priors(resolution=res, gmm=GmmPriors(stds=Uniform(20.0, 20.0)))
    gen = SyntheticGenerator([toy_map((40, 40, 40))], GeneratorConfig(target="s1", output_shape=None, priors=priors))
    rng = np.random.default_rng(seed)
    while True:
        s = gen.sample(rng)
        if s.record.acquisition.slice_axis == axis:
            return s


def test_requested_spacing_is_measurable_in_the_generated_image():
    s = _sample_with(4.0, 2, seed=3)
    a = s.record.acquisition
    assert a.spacing[2] == 4.0 and 1 <= a.thickness[2] <= 4.0
    # piecewise linear between slices every 4 mm: second differences vanish off the slice positions
    d2 = np.abs(np.diff(s.image, 2, axis=2)).mean(axis=(0, 1))
    off_slice = [i for i in range(len(d2)) if (i + 1) % 4 != 0]
    on_slice = [i for i in range(len(d2)) if (i + 1) % 4 == 0 and i + 1 <= 36]
    assert d2[off_slice].max() < 1e-5 < d2[on_slice].min()
    # and the image is smoother along the slice axis than in-plane
    roughness = [np.abs(np.diff(s.image, axis=ax)).mean() for ax in range(3)]
    assert roughness[2] < 0.7 * min(roughness[0], roughness[1])


def test_thicker_slices_blur_more():
    sig = []
    for thickness in (1.5, 6.0):
        acq = AcquisitionParams(np.array([1.0, 1.0, 6.0]), np.array([1.0, 1.0, thickness]),
                                np.array([0.0, 0.0, 0.75 * thickness]))
        noise = np.random.default_rng(4).standard_normal((32, 32, 64)).astype(np.float32)
        sig.append(np.std(subsample(blur(noise, acq.sigma), acq.spacing)))
    assert sig[1] < sig[0] * 0.6  # averaging over more voxels reduces the noise
