"""Training losses of the original (``SynthSeg/metrics_model.py``: ``DiceLoss``, ``WeightedL2Loss``).

Soft Dice: y and p renormalised over channels, Dice_c = (2 sum y p + 1e-7) / (sum y^2 + sum p^2 +
1e-7) over the voxels of one example, loss = mean over channels *including background* and over
the batch of (1 - Dice_c). wl2 warm-up on the logits z: target 5 (2y - 1), per-voxel weight
1 - y_background + 1e-8, loss = sum w (z - 5 (2y - 1))^2 / (C sum w).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

EPS = 1e-7


def one_hot(target: torch.Tensor, n: int) -> torch.Tensor:
    """(N, X, Y, Z) channel indices -> (N, n, X, Y, Z) float one-hot."""
    return F.one_hot(target.long(), n).permute(0, 4, 1, 2, 3).float()


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over batch and channels (background included) of 1 - soft Dice; ``target`` indices."""
    p = torch.softmax(logits.float(), dim=1)
    y = one_hot(target, logits.shape[1])
    p = torch.clamp(p / (p.sum(1, keepdim=True) + EPS), 0, 1)
    dims = (2, 3, 4)
    dice = (2 * (y * p).sum(dims) + EPS) / ((y * y).sum(dims) + (p * p).sum(dims) + EPS)
    return (1 - dice).mean()


def wl2_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Weighted L2 warm-up loss on the logits (background voxels weigh 1e-8)."""
    c = logits.shape[1]
    y = one_hot(target, c)
    w = 1 - y[:, :1] + 1e-8
    return (w * (logits.float() - 5 * (2 * y - 1)) ** 2).sum() / (c * w.sum())


def hard_dice(pred: torch.Tensor, target: torch.Tensor, n: int) -> torch.Tensor:
    """Dice of every channel (n,) between two index volumes; NaN where a label is in neither."""
    p, y = one_hot(pred[None], n)[0], one_hot(target[None], n)[0]
    inter = (p * y).flatten(1).sum(1)
    total = p.flatten(1).sum(1) + y.flatten(1).sum(1)
    return torch.where(total > 0, 2 * inter / total.clamp(min=1), torch.full_like(total, float("nan")))
