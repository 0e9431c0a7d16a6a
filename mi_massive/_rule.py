"""The paper's rule, once: an entry is massive when |x| > threshold and |x| >= ratio x its layer's median |x|.

Every analysis asks `passes` (or `massive_mask`, which takes a layer output); nothing else writes the comparison.
"""

from __future__ import annotations

import math
from typing import TypeVar

import torch
from torch import Tensor

A = TypeVar("A")  # a torch tensor or a numpy array: the rule is the same on any device and dtype


def check(threshold: float, ratio: float) -> None:
    """Raise unless threshold and ratio are non-negative numbers (called before any forward pass)."""
    for name, v in (("threshold", threshold), ("ratio", ratio)):
        if not isinstance(v, (int, float)) or math.isnan(v) or v < 0:
            raise ValueError(f"{name} must be a non-negative number, got {v!r}")


def passes(magnitude: A, median: A, *, threshold: float, ratio: float) -> A:
    """The rule on |x| (`magnitude`) and the layer's median |x| (`median`, broadcast against it).

        >>> import torch
        >>> passes(torch.tensor([50.0, 150.0, 150.0]), torch.tensor([0.01, 0.01, 1.0]), threshold=100, ratio=1000)
        tensor([False,  True, False])
    """
    check(threshold, ratio)
    return (magnitude > threshold) & (magnitude >= ratio * median)


def massive_mask(x: Tensor, *, threshold: float, ratio: float) -> Tensor:
    """The rule per prompt on a layer output x (batch, pos, d_model): the median is that prompt's, over every
    position and dimension of the layer (inf counted as the largest finite float).

        >>> x = torch.ones(1, 2, 4)
        >>> x[0, 0, 3] = -2000.0
        >>> massive_mask(x, threshold=100, ratio=1000).nonzero().tolist()
        [[0, 0, 3]]
    """
    a = x.detach().abs().float()  # (batch, pos, d_model)
    med = a.flatten(1).nan_to_num(posinf=torch.finfo(torch.float32).max).median(dim=1).values  # (batch,)
    return passes(a, med[:, None, None], threshold=threshold, ratio=ratio)
