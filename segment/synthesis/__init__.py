"""Synthetic data engine: the generative model (S1/S2 training images), the degradation model
(D's training pairs) and the cohort simulator with planted ageing (numpy/scipy only)."""
