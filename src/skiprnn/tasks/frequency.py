"""Frequency discrimination (paper Appendix A.1, digest §3.4; after Neil et al. 2016).

Binary classification of sampled cosines ``x(t) = cos(2π t / P + φ)``:

* class 0 ("target"): period ``P ~ U(5, 6)`` ms;
* class 1 ("distractor"): ``P`` uniform over ``[1, 5] ∪ [6, 100]`` ms (uniform over the union, i.e.
  each interval chosen in proportion to its length). **Paper vs code:** the paper says (1,5) ∪
  (6,100); the released code samples [0, 5] ∪ [6, 100], which allows periods near 0 (aliased noise,
  and a division by zero at exactly 0). We follow the **paper** by default
  (``distractor_min_period_ms = 1.0``); set it to a small positive value to approach the code;
* phase ``φ ~ U(0, P)`` used directly as radians, exactly as the code does (``cos(2π t/P + φ)``
  with φ drawn from U(0, P)); the paper calls it a random phase shift;
* duration 100 ms sampled every ``Ts = sampling_period_ms`` (1 ms -> T = 100, 0.5 ms -> T = 200) at
  ``t = linspace(0, duration - Ts, T)`` (the code's grid);
* batches are stratified: the first half of every generated batch is class 0, the second half
  class 1 (odd sizes put the extra item in class 1), so chance level is 50%.

Loss: mean cross-entropy over the batch (the code's softmax cross-entropy, mean). Metric: accuracy;
solved means held-out accuracy > 0.99. λ grid {0, 1e-5, 1e-4}; the paper ran no p_skip baseline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

import torch

from .base import Classification, SyntheticTask, check_finite_positive

__all__ = ["FrequencyTask"]


@dataclass
class FrequencyTask(Classification, SyntheticTask):
    """Frequency discrimination. Overridable: ``sampling_period_ms`` (1.0 or 0.5 in the paper),
    ``duration_ms`` (100), ``target_period_ms`` ((5, 6)), ``distractor_min_period_ms`` (1.0),
    ``distractor_max_period_ms`` (100) and every :class:`SyntheticTask` field.

    Items: ``x (T, 1)`` float32 amplitudes, ``y`` int64 0-d (0 = target band, 1 = distractor).
    ``seq_len = round(duration_ms / sampling_period_ms)``.
    """

    name: ClassVar[str] = "frequency"
    input_size: ClassVar[int] = 1
    output_size: ClassVar[int] = 2
    solved_threshold: ClassVar[float] = 0.99

    sampling_period_ms: float = 1.0
    duration_ms: float = 100.0
    target_period_ms: tuple = (5.0, 6.0)
    distractor_min_period_ms: float = 1.0
    distractor_max_period_ms: float = 100.0
    cost_per_sample: tuple = (0.0, 1e-5, 1e-4)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_finite_positive("sampling_period_ms", self.sampling_period_ms)
        check_finite_positive("duration_ms", self.duration_ms)
        check_finite_positive("distractor_min_period_ms", self.distractor_min_period_ms)
        lo, hi = self.target_period_ms
        check_finite_positive("target_period_ms[0]", lo)
        if not (self.distractor_min_period_ms <= lo < hi <= self.distractor_max_period_ms):
            raise ValueError(
                "need distractor_min_period_ms <= target_period_ms[0] < target_period_ms[1] <= "
                f"distractor_max_period_ms, got {self.distractor_min_period_ms}, "
                f"{self.target_period_ms}, {self.distractor_max_period_ms}")
        ratio = self.duration_ms / self.sampling_period_ms
        if abs(ratio - round(ratio)) > 1e-6 or round(ratio) < 2:
            raise ValueError(f"duration_ms / sampling_period_ms must be an integer >= 2, got {ratio}")

    @property
    def seq_len(self) -> int:
        """Number of samples: ``duration_ms / sampling_period_ms`` (100 for 1 ms, 200 for 0.5 ms)."""
        return int(round(self.duration_ms / self.sampling_period_ms))

    def times_ms(self) -> torch.Tensor:
        """Sampling instants ``linspace(0, duration - Ts, T)`` in ms, float64 (T,)."""
        return torch.linspace(0.0, self.duration_ms - self.sampling_period_ms, self.seq_len,
                              dtype=torch.float64)

    def sample_periods(self, n: int, label: int, generator: Optional[torch.Generator] = None
                       ) -> torch.Tensor:
        """``n`` periods (ms, float64) of class ``label`` (0 target band, 1 distractor union)."""
        lo, hi = self.target_period_ms
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        if label == 0:
            return lo + (hi - lo) * u
        a, b = self.distractor_min_period_ms, self.distractor_max_period_ms
        len1, len2 = lo - a, b - hi
        v = u * (len1 + len2)
        return torch.where(v < len1, a + v, hi + (v - len1))

    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> tuple:
        """``n`` stratified items: ``x (n, T, 1)`` float32, ``y (n,)`` int64; the first ``n // 2``
        are class 0 and the rest class 1. Deterministic given ``generator``."""
        n0 = n // 2
        periods = torch.cat([self.sample_periods(n0, 0, generator),
                             self.sample_periods(n - n0, 1, generator)])
        phase = torch.rand(n, generator=generator, dtype=torch.float64) * periods  # U(0, P) radians
        t = self.times_ms()
        x = torch.cos(2 * torch.pi * t[None, :] / periods[:, None] + phase[:, None])
        y = torch.cat([torch.zeros(n0, dtype=torch.long), torch.ones(n - n0, dtype=torch.long)])
        return x.float().unsqueeze(-1), y

    def solved(self, metric_value: float) -> bool:
        """True when held-out accuracy > 0.99."""
        return float(metric_value) > self.solved_threshold
