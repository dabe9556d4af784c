"""Cubic B-spline basis on age and the monotone-penalised least-squares solver of the ageing model.

Basis: ``n_knots`` equally spaced knots from the youngest to the oldest age (both included), the
two boundary knots repeated ``degree`` more times. With 10 knots and cubic pieces this gives
``n_knots + degree - 1 = 12`` basis functions; they sum to one at every age (the basis carries
the intercept) and the curve is monotone when its coefficients are.

Penalised fit (one structure): minimise, over coefficients ``beta`` of a design ``X``,

    F(beta) = ||y - X beta||^2 / (n s^2) + (lambda / s) * sum_k max(0, -d (beta_{k+1} - beta_k))

where the differences run over the spline coefficients, ``d`` is +1 (increasing) or -1
(decreasing) and ``s`` is the standard deviation of ``y``. Dividing by ``s`` makes ``lambda``
dimensionless (the same for mm^3 and fractions of TIV) and dividing by ``n`` makes it independent
of the sample size. The penalty is the absolute size of wrong-sign differences: an exact penalty,
so for a large enough ``lambda`` the solution is exactly the hard-constrained (monotone) one, and
for a small one large non-monotone features in the data survive (a soft constraint).

L-BFGS-B needs a smooth objective: we write the spline coefficients as a first value plus
increments in the chosen direction, ``d * (beta_{k+1} - beta_k) = u_k - v_k`` with ``u, v >= 0``
(bounds, which L-BFGS-B handles exactly), so the penalty is the linear term ``lambda/s * sum v``.
The start is the unpenalised least-squares solution; when it is already monotone it is the
optimum and is returned as is.

Exactness and speed: the optimum is determined by which increments are positive, zero or
negative (its "pattern"); given the pattern it solves a linear system. After L-BFGS-B we read
the pattern off its solution, solve that system and keep the result when it meets the optimality
(KKT) conditions, which gives the optimum to machine precision. The bootstrap starts from the
full-data pattern and updates patterns for all replicates at once (a primal-dual active-set
iteration); replicates it does not settle go to L-BFGS-B.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.interpolate import BSpline
from scipy.optimize import minimize

DIRECTIONS = {"increasing": 1, "decreasing": -1, "none": 0}


@dataclass(frozen=True)
class SplineBasis:
    """Cubic B-spline basis on ``[age_min, age_max]`` (years) with equally spaced knots."""

    age_min: float
    age_max: float
    n_knots: int = 10
    degree: int = 3

    @property
    def knots(self) -> np.ndarray:
        """The ``n_knots`` distinct knots (years), boundaries included."""
        return np.linspace(self.age_min, self.age_max, self.n_knots)

    @property
    def n_basis(self) -> int:
        return self.n_knots + self.degree - 1

    def _spline(self) -> BSpline:
        k = self.degree
        t = np.r_[[self.age_min] * k, self.knots, [self.age_max] * k]
        return BSpline(t, np.eye(self.n_basis), k, extrapolate=False)

    def _check(self, ages: np.ndarray) -> np.ndarray:
        ages = np.asarray(ages, dtype=float)
        tol = 1e-9 * max(1.0, abs(self.age_max))
        if ages.size and (ages.min() < self.age_min - tol or ages.max() > self.age_max + tol):
            raise ValueError(f"ages outside the fitted range [{self.age_min:g}, {self.age_max:g}] years")
        return np.clip(ages, self.age_min, self.age_max)

    def evaluate(self, ages) -> np.ndarray:
        """Basis values, shape (len(ages), n_basis)."""
        return self._spline()(self._check(ages))

    def derivative(self, ages) -> np.ndarray:
        """Basis derivatives in 1/years, shape (len(ages), n_basis)."""
        return self._spline().derivative()(self._check(ages))


@dataclass(frozen=True)
class PenaltySettings:
    """Monotonicity penalty of one fit: the spline block, its direction and the weight lambda."""

    n_spline: int
    direction: int  # +1 increasing, -1 decreasing, 0 none
    weight: float  # lambda (dimensionless)


@dataclass(frozen=True)
class Solution:
    """Coefficients, convergence, L-BFGS-B iterations (0: least squares was already monotone)
    and the pattern of the spline increments: +1 right sign, 0 held at zero, -1 wrong sign."""

    coef: np.ndarray
    converged: bool
    n_iter: int
    pattern: np.ndarray


def least_squares(gram: np.ndarray, xty: np.ndarray) -> np.ndarray:
    """Solve ``gram @ b = xty``; works on stacks (..., p, p) and (..., p)."""
    return np.linalg.solve(gram, xty[..., None])[..., 0]


def wrong_sign_increments(coef: np.ndarray, settings: PenaltySettings) -> np.ndarray:
    """Sizes of wrong-sign spline-coefficient differences, shape (..., n_spline - 1), >= 0."""
    diff = np.diff(coef[..., : settings.n_spline], axis=-1)
    return np.maximum(-settings.direction * diff, 0.0)


def increment_map(p: int, settings: PenaltySettings) -> np.ndarray:
    """Square matrix T with ``beta = T @ theta``, theta = (first spline coef, signed increments
    ``d * (beta_{k+1} - beta_k)``, other coefs)."""
    k = settings.n_spline
    t = np.eye(p)
    t[:k, 0] = 1.0
    t[:k, 1:k] = settings.direction * np.tril(np.ones((k, k - 1)), -1)
    return t


def active_map(p: int, settings: PenaltySettings, fixed: np.ndarray) -> np.ndarray:
    """Matrix A (p x r) with ``beta = A @ theta_r`` where theta_r drops the increments flagged in
    ``fixed`` (held at zero by the penalty): ``X @ A`` is the active design of a penalised fit.
    Without fixed increments, the identity."""
    if not fixed.any():
        return np.eye(p)
    keep = np.ones(p, dtype=bool)
    keep[1 : settings.n_spline] = ~fixed
    return increment_map(p, settings)[:, keep]


def _reparametrisation(p: int, settings: PenaltySettings) -> np.ndarray:
    """Matrix M with ``beta = M @ theta``, theta = (first spline coef, u, v, other coefs)."""
    k, d = settings.n_spline, settings.direction
    cum = np.tril(np.ones((k, k - 1)), -1)  # row i sums increments 0..i-1
    m = np.zeros((p, 1 + 2 * (k - 1) + p - k))
    m[:k, 0] = 1.0
    m[:k, 1:k] = d * cum
    m[:k, k : 2 * k - 1] = -d * cum
    m[k:, 2 * k - 1 :] = np.eye(p - k)
    return m


def _pattern(coef: np.ndarray, settings: PenaltySettings, scale: float) -> np.ndarray:
    steps = settings.direction * np.diff(coef[..., : settings.n_spline], axis=-1)
    tol = 1e-9 * scale
    return np.where(steps > tol, 1, np.where(steps < -tol, -1, 0))


def solve_patterns(gram, xty, n, scale: float, settings: PenaltySettings, pattern: np.ndarray,
                   max_rounds: int = 25) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Primal-dual active-set solve for stacks of problems (gram (B, p, p), xty (B, p), n (B,)).

    Minimises ``||y - X beta||^2 + mu * sum max(0, -w)`` (``mu = n s lambda``, the objective
    above times ``n s^2``) over ``theta`` with signed increments ``w``. Given a pattern, zero
    increments are fixed and wrong-sign ones get the linear term; the pattern is then updated
    where the KKT conditions fail (a right-sign increment turned negative, a zero one whose
    gradient ``q`` leaves ``[0, mu]``). Returns (coef (B, p), solved (B,), pattern (B, k-1)).
    """
    b, p = xty.shape
    k = settings.n_spline
    t = increment_map(p, settings)
    hess = t.T @ gram @ t
    lin = xty @ t
    mu = (np.broadcast_to(n, (b,)) * scale * settings.weight)[:, None]
    inc = np.arange(1, k)
    state = np.array(np.broadcast_to(pattern, (b, k - 1)))
    theta = np.zeros((b, p))
    solved = np.zeros(b, dtype=bool)
    tol_w = 1e-12 * scale
    for _ in range(max_rounds):
        todo = np.flatnonzero(~solved)
        if todo.size == 0:
            break
        st = state[todo]
        fixed = np.zeros((todo.size, p), dtype=bool)
        fixed[:, inc] = st == 0
        keep = ~fixed
        h = hess[todo] * keep[:, :, None] * keep[:, None, :] + fixed[:, :, None] * np.eye(p)
        r = lin[todo].copy()
        r[:, inc] += np.where(st == -1, 0.5 * mu[todo], 0.0)
        r[fixed] = 0.0
        th = least_squares(h, r)
        q = 2.0 * (np.einsum("bij,bj->bi", hess[todo], th) - lin[todo])[:, inc]
        w = th[:, inc]
        tol_q = 1e-9 * np.abs(lin[todo]).max(axis=1, keepdims=True)
        bad_pos = (st == 1) & (w < -tol_w)
        bad_neg = (st == -1) & (w > tol_w)
        up = (st == 0) & (q < -tol_q)
        down = (st == 0) & (q > mu[todo] + tol_q)
        ok = ~(bad_pos | bad_neg | up | down).any(axis=1)
        theta[todo[ok]] = th[ok]
        solved[todo[ok]] = True
        st = np.where(bad_pos | bad_neg, 0, st)
        st = np.where(up, 1, np.where(down, -1, st))
        state[todo] = st
    return theta @ t.T, solved, state


def solve_penalised(gram: np.ndarray, xty: np.ndarray, n: float, scale: float,
                    settings: PenaltySettings, unpenalised: np.ndarray | None = None,
                    start: np.ndarray | None = None) -> Solution:
    """Minimise the penalised objective given sufficient statistics ``X'X``, ``X'y`` (original units).

    ``unpenalised``: the least-squares solution (computed when not given), returned when it is
    monotone; ``start``: where L-BFGS-B starts (default ``unpenalised``). ``scale`` is ``s`` above.
    """
    ols = least_squares(gram, xty) if unpenalised is None else unpenalised
    if settings.direction == 0 or settings.weight <= 0 or not wrong_sign_increments(ols, settings).any():
        return Solution(ols, True, 0, _pattern(ols, settings, scale) if settings.direction else
                        np.ones(settings.n_spline - 1, dtype=int))
    beta0 = ols if start is None else start
    k, p = settings.n_spline, gram.shape[0]
    m = _reparametrisation(p, settings)
    hess = m.T @ gram @ m / (n * scale**2)  # objective in units of y / s
    lin = m.T @ xty / (n * scale**2)
    lin[k : 2 * k - 1] -= 0.5 * settings.weight / scale  # the linear penalty on v
    # Profile out the unbounded parameters (first spline coefficient, covariates): for given
    # increments they have a closed form, and the remaining bound-constrained problem is much
    # better conditioned. Then scale the increments to a unit diagonal (positive, so bounds stay).
    bnd = np.arange(1, 2 * k - 1)
    free = np.r_[0, np.arange(2 * k - 1, m.shape[1])]
    h_fb = np.linalg.solve(hess[np.ix_(free, free)], np.column_stack([hess[np.ix_(free, bnd)], lin[free]]))
    schur = hess[np.ix_(bnd, bnd)] - hess[np.ix_(bnd, free)] @ h_fb[:, :-1]
    reduced = lin[bnd] - hess[np.ix_(bnd, free)] @ h_fb[:, -1]
    unit = 1.0 / np.sqrt(np.maximum(np.diag(schur), 1e-300))
    schur_s, reduced_s = schur * unit[:, None] * unit[None, :], reduced * unit

    def objective(phi):
        h_phi = schur_s @ phi
        return float(phi @ h_phi - 2.0 * reduced_s @ phi), 2.0 * (h_phi - reduced_s)

    steps = settings.direction * np.diff(beta0[:k])
    phi0 = np.r_[np.maximum(steps, 0), np.maximum(-steps, 0)] / unit
    res = minimize(objective, phi0, jac=True, method="L-BFGS-B", bounds=[(0.0, None)] * bnd.size,
                   options={"maxiter": 20000, "maxcor": 30, "ftol": 1e-15, "gtol": 1e-11})
    grad = objective(res.x)[1]
    projected = np.where(res.x > 0, np.abs(grad), np.maximum(-grad, 0.0))
    theta = np.empty(m.shape[1])
    theta[bnd] = res.x * unit
    theta[free] = h_fb[:, -1] - h_fb[:, :-1] @ theta[bnd]
    u, v = theta[1:k], theta[k : 2 * k - 1]
    pattern = np.where(u > 0, 1, np.where(v > 0, -1, 0))
    coef, solved, state = solve_patterns(gram[None], xty[None], n, scale, settings, pattern, max_rounds=1)
    if solved[0]:  # L-BFGS-B found the pattern: return the exact solution for it
        return Solution(coef[0], True, int(max(res.nit, 1)), state[0])
    return Solution(m @ theta, bool(res.success or projected.max() <= 1e-7), int(max(res.nit, 1)), pattern)
