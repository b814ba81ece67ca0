"""Small statistics every layer uses: a mean with its interval, standard errors, and a compensated running sum
(float32 on every device, float64 only in numpy on the host: Apple's MPS has no float64)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported where a tensor is made: the comparison reads numbers without it
    import torch


@dataclass(frozen=True)
class Interval:
    """A mean with its standard error and `level` t-interval: a paired gap over images, or a metric over seeds."""

    mean: float
    se: float
    lo: float
    hi: float
    images: int  # how many values it averages (images, or seeds in a sweep summary)


def host(values: torch.Tensor | Sequence[float] | np.ndarray) -> np.ndarray:
    """Values as a float64 numpy array on the host (a tensor leaves its device first, in its own dtype)."""
    if hasattr(values, "detach"):  # a torch tensor
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=np.float64)


def interval(values: torch.Tensor | Sequence[float] | np.ndarray, level: float = 0.95) -> Interval:
    """Mean, standard error and the t-interval of the mean (an interval of width 0 with one value)."""
    from scipy import stats

    x = host(values)
    n, mean = len(x), float(x.mean())
    se = float(x.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0
    half = float(stats.t.ppf(0.5 + level / 2, df=max(1, n - 1))) * se
    return Interval(mean, se, mean - half, mean + half, n)


def standard_error(values: torch.Tensor | Sequence[float] | np.ndarray) -> float:
    """The standard error of the mean across `values` (0 for one value), computed in float64 on the host."""
    x = host(values)
    return float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else 0.0


def paired_difference(a: torch.Tensor, b: torch.Tensor, level: float = 0.95) -> Interval:
    """Mean of a - b over the same images, its standard error and a `level` t-interval.

    Two fits scored on the same images differ far less from image to image than either NLL does
    (an image that is hard for one is hard for both), so the paired interval is the honest one.
    The difference is taken in float64 on the host."""
    return interval(host(a) - host(b), level)


class CompensatedSum:
    """A running elementwise sum kept to about float64's accuracy in float32 tensors (Kahan-Babuska-Neumaier):
    the lost low-order part of each addition is carried in `compensation` and added back. AIS accumulates
    its log weights over hundreds of tempered steps this way on any device."""

    def __init__(self, start: torch.Tensor):
        self.sum = start.clone()
        self.compensation = start.new_zeros(start.shape)

    def add_(self, term: torch.Tensor) -> None:
        total = self.sum + term
        big = self.sum.abs() >= term.abs()
        # the part of the smaller operand that `total` could not hold (Tensor.where: torch.where(big, a, b))
        self.compensation += ((self.sum - total) + term).where(big, (term - total) + self.sum)
        self.sum = total

    @property
    def total(self) -> torch.Tensor:
        return self.sum + self.compensation
