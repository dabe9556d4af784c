"""ComBat harmonisation of volumes across sites (``harmonise="combat"`` of the norms model).

ComBat (Johnson et al., Biostatistics 2007; Fortin et al., NeuroImage 2018) models structure j
of scan i at site k as ``y_ij = alpha_j + x_i . b_j + gamma_kj + delta_kj e_ij`` and removes the
site's additive (``gamma``) and multiplicative (``delta``) effects, estimated with empirical-Bayes
shrinkage across structures, while keeping the covariate effects ``x . b``. The estimation is
``neuroHarmonize.harmonizationLearn`` (PyPI ``neuroHarmonize``, on top of ``neuroCombat``) with
the norms model's own covariates: the age B-spline basis (less its first function: the site
columns carry the intercept), the centred spacing terms and sex, so the nonlinear age effect is
protected. The adjustment of one scan,

    y* = m(x) + (y - m(x) - sqrt(v) gamma*_k) / sqrt(delta*_k),   m(x) = grand mean + x . b,

is written out here from the learned parameters (kept in the model's JSON), so that new scans of
the fitted sites are harmonised without refitting; scans of other sites are left as they are
(and flagged by the scores). With one structure the empirical-Bayes step is skipped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from morphometry.errors import InputError


@dataclass(frozen=True)
class ComBatParams:
    """Learned ComBat parameters of one method: J structures, S sites, P covariates."""

    sites: tuple[str, ...]
    structures: tuple[str, ...]
    site_means: np.ndarray  # (S, J) B_hat rows of the sites (mm^3)
    covariate_effects: np.ndarray  # (P, J)
    site_counts: np.ndarray  # (S,) scans per site in the fit
    var_pooled: np.ndarray  # (J,) mm^6
    gamma_star: np.ndarray  # (S, J) standardised additive site effects
    delta_star: np.ndarray  # (S, J) multiplicative site effects (variance ratios)

    @property
    def grand_mean(self) -> np.ndarray:
        """(J,) the scan-weighted mean of the site intercepts."""
        return (self.site_counts / self.site_counts.sum()) @ self.site_means

    def site_offsets_mm3(self) -> pd.DataFrame:
        """Additive site effect of every (site, structure) in mm^3: sqrt(v) gamma*."""
        off = self.gamma_star * np.sqrt(self.var_pooled)[None, :]
        return pd.DataFrame(off, index=pd.Index(self.sites, name="site"), columns=list(self.structures))

    def apply(self, volumes: np.ndarray, site_index: np.ndarray, covariates: np.ndarray) -> np.ndarray:
        """Harmonised volumes (n, J); rows with ``site_index`` -1 (not a fitted site) unchanged."""
        mean = self.grand_mean[None, :] + covariates @ self.covariate_effects
        out = np.array(volumes, dtype=float)
        known = site_index >= 0
        k = site_index[known]
        sd = np.sqrt(self.var_pooled)[None, :]
        shifted = volumes[known] - mean[known] - sd * self.gamma_star[k]
        out[known] = mean[known] + shifted / np.sqrt(self.delta_star[k])
        return out

    def to_json(self) -> dict:
        return {"sites": list(self.sites), "structures": list(self.structures),
                **{name: getattr(self, name).tolist() for name in
                   ("site_means", "covariate_effects", "site_counts", "var_pooled", "gamma_star", "delta_star")}}

    @classmethod
    def from_json(cls, doc: dict) -> ComBatParams:
        arrays = {k: np.asarray(v, dtype=float) for k, v in doc.items() if k not in ("sites", "structures")}
        arrays["covariate_effects"] = arrays["covariate_effects"].reshape(-1, len(doc["structures"]))
        return cls(tuple(doc["sites"]), tuple(doc["structures"]), **arrays)


def learn_combat(volumes: np.ndarray, sites: np.ndarray, covariates: np.ndarray,
                 structures: tuple[str, ...]) -> ComBatParams:
    """Estimate ComBat on the scans with every structure measured (rows of ``volumes`` (n, J)
    without NaN); ``sites``: labels (n,), ``covariates``: (n, P) numeric."""
    try:
        from neuroHarmonize import harmonizationLearn
    except ImportError:
        raise InputError("ComBat needs neuroHarmonize and neuroCombat: pip install --no-deps neuroHarmonize "
                         "neuroCombat (README: Site harmonisation)", setting="harmonise") from None

    rows = np.isfinite(volumes).all(axis=1)
    covars = pd.DataFrame(covariates[rows], columns=[f"x{i}" for i in range(covariates.shape[1])])
    covars.insert(0, "SITE", np.asarray(sites)[rows].astype(str))
    model, _ = _quiet(harmonizationLearn, volumes[rows], covars, eb=volumes.shape[1] > 1)
    labels = tuple(str(s) for s in model["SITE_labels"])
    n_sites = len(labels)
    counts = np.array([(covars["SITE"] == s).sum() for s in labels], dtype=float)
    return ComBatParams(labels, tuple(structures), model["B_hat"][:n_sites], model["B_hat"][n_sites:], counts,
                        np.asarray(model["var_pooled"]).ravel(), np.asarray(model["gamma_star"]),
                        np.asarray(model["delta_star"]))


def _quiet(fn, *args, **kwargs):
    """neuroCombat prints its progress and neuroHarmonize uses ``np.matrix``: keep both off the
    command's output."""
    import contextlib
    import io
    import warnings

    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        return fn(*args, **kwargs)
