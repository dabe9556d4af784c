"""The sinh-arcsinh (SHASH) family of the normative model, with a uniform outlier component.

SHASH (Jones & Pewsey, Biometrika 2009), as GAMLSS's SHASHo: a volume ``y`` with location
``mu``, scale ``sigma`` > 0, skewness ``epsilon`` and tail weight ``delta`` > 0 has

    z = sinh(delta * asinh((y - mu) / sigma) - epsilon) ~ N(0, 1),

so its centile q sits at ``mu + sigma * sinh((asinh(Phi^-1(q)) + epsilon) / delta)``; with
``epsilon = 0`` and ``delta = 1`` it is the normal distribution N(mu, sigma^2). ``epsilon > 0``
skews to the right, ``delta < 1`` gives heavier tails than the normal.

Robustness: the likelihood of one scan is the mixture ``(1 - pi) f_SHASH(y) + pi u`` with ``u``
a uniform density over the range of the fitted volumes: gross errors (failed segmentations) are
taken up by the uniform part instead of bending the centiles. A scan's posterior probability of
being such an outlier, ``pi u / ((1 - pi) f_SHASH + pi u)``, is reported; its weight in the fit of
the SHASH parameters is one minus that.
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtr, ndtri

LOG_SQRT_2PI = 0.5 * np.log(2.0 * np.pi)


def shash_quantile(q, mu, sigma, epsilon, delta):
    """Volume at centile ``q`` (a probability in (0, 1)); arguments broadcast."""
    return mu + sigma * np.sinh((np.arcsinh(ndtri(q)) + epsilon) / delta)


def shash_z(y, mu, sigma, epsilon, delta):
    """The normal deviate of ``y``: its centile is ``Phi(z)``."""
    return np.sinh(delta * np.arcsinh((y - mu) / sigma) - epsilon)


def shash_centile(y, mu, sigma, epsilon, delta):
    """Centile of ``y`` in percent (0..100)."""
    return 100.0 * ndtr(shash_z(y, mu, sigma, epsilon, delta))


def shash_logpdf_parts(y, mu, log_sigma, epsilon, log_delta):
    """log f_SHASH(y) and its derivatives with respect to mu, log sigma, epsilon, log delta.

    Returns (logpdf, d_mu, d_log_sigma, d_epsilon, d_log_delta), each of the broadcast shape.
    """
    sigma, delta = np.exp(log_sigma), np.exp(log_delta)
    r = (y - mu) / sigma
    a = np.arcsinh(r)
    s = delta * a - epsilon
    z, c = np.sinh(s), np.cosh(s)
    one_r2 = 1.0 + r * r
    logpdf = (-log_sigma + log_delta + np.log(c) - 0.5 * np.log(one_r2) - 0.5 * z * z - LOG_SQRT_2PI)
    g = np.tanh(s) - z * c  # d logpdf / d s
    d_r = g * delta / np.sqrt(one_r2) - r / one_r2
    return logpdf, -d_r / sigma, -1.0 - d_r * r, -g, 1.0 + g * delta * a


def mixture_loglik(logpdf, log_pi, log_1m_pi, log_u):
    """log((1 - pi) f + pi u) and the posterior inlier weight (1 - pi) f / that."""
    inlier = log_1m_pi + logpdf
    total = np.logaddexp(inlier, log_pi + log_u)
    return total, np.exp(inlier - total)
