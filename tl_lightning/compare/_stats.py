"""The paired t-test over seeds that decides "beyond noise" or "within noise", without scipy.

Every strategy of a comparison is trained once per seed, and a seed gives every strategy the
same split, order and augmentation. Two strategies are compared on the seeds both finished, by
the differences per seed (paired): what the split and the seed do to both cancels out, which is
most of the spread when test sets are small. The test is Student's t on those differences,
two-sided; its p-value comes from the regularized incomplete beta function (Lentz's continued
fraction, as in Numerical Recipes ``betacf``), checked against ``scipy.stats`` in the tests.

With few seeds the test has little power: with 3 seeds (2 degrees of freedom) a mean difference
must exceed 4.30 standard errors to be called at alpha = 0.05. :attr:`PairedTest.detectable`
gives that threshold in the metric's own units, so the report can say how large a difference
would have had to be.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from tl_lightning._checks import check_number

__all__ = ["PairedTest", "detectable_t", "paired_t_test", "student_t_critical", "student_t_two_sided_p"]


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta ``I_x(a, b)`` for ``0 <= x <= 1``."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    front = math.exp(log_front)
    # the continued fraction converges fast on this side of the mean; the symmetry covers the other
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def student_t_two_sided_p(t: float, df: float) -> float:
    """``P(|T| >= |t|)`` for Student's t with ``df`` degrees of freedom.

    Example:
        >>> round(student_t_two_sided_p(4.302652729911275, 2), 6)
        0.05
    """
    df = check_number("df", df, low=0.0, low_open=True)
    if math.isinf(t):
        return 0.0
    if math.isnan(t):
        return float("nan")
    return _betainc(df / 2.0, 0.5, df / (df + t * t))


def student_t_critical(alpha: float, df: float) -> float:
    """The ``t`` with ``P(|T| >= t) = alpha`` (two-sided critical value), by bisection.

    Example:
        >>> round(student_t_critical(0.05, 2), 3)
        4.303
    """
    alpha = check_number("alpha", alpha, low=0.0, high=1.0, low_open=True, high_open=True)
    low, high = 0.0, 1.0
    while student_t_two_sided_p(high, df) > alpha:
        high *= 2.0
    for _ in range(200):
        mid = (low + high) / 2.0
        if student_t_two_sided_p(mid, df) > alpha:
            low = mid
        else:
            high = mid
    return (low + high) / 2.0


@dataclass(frozen=True)
class PairedTest:
    """A paired t-test of ``a - b`` over the seeds both have.

    Attributes:
        n: Number of pairs (seeds both finished).
        mean_diff: Mean of ``a - b``.
        sd_diff: Sample standard deviation of the differences (``ddof=1``; ``None`` for one pair).
        t: The t statistic (``inf`` when every difference is the same non-zero number).
        p_value: Two-sided p-value; ``None`` with fewer than 2 pairs (no noise estimate).
        detectable: The smallest ``|mean_diff|`` the test calls at ``alpha`` with this spread
            (``t_crit * sd / sqrt(n)``); ``None`` with fewer than 2 pairs.
        alpha: The significance level.
    """

    n: int
    mean_diff: float | None
    sd_diff: float | None
    t: float | None
    p_value: float | None
    detectable: float | None
    alpha: float

    @property
    def beyond_noise(self) -> bool:
        """Whether the difference is significant at ``alpha`` (False when it cannot be tested)."""
        return self.p_value is not None and self.p_value < self.alpha


def paired_t_test(a: Sequence[float], b: Sequence[float], alpha: float = 0.05) -> PairedTest:
    """Paired two-sided t-test of ``a`` against ``b`` (equal length, element ``i`` = seed ``i``).

    Args:
        a: Metric of one strategy per seed.
        b: Metric of the other strategy for the same seeds.
        alpha: Significance level for :attr:`PairedTest.detectable` and ``beyond_noise``.

    Returns:
        The test; with fewer than 2 pairs ``p_value`` and ``detectable`` are ``None``.

    Example:
        >>> test = paired_t_test([0.80, 0.82, 0.81], [0.50, 0.52, 0.49])
        >>> test.beyond_noise, round(test.mean_diff, 3)
        (True, 0.307)
    """
    alpha = check_number("alpha", alpha, low=0.0, high=1.0, low_open=True, high_open=True)
    if len(a) != len(b):
        from tl_lightning.errors import ConfigurationError

        raise ConfigurationError(
            f"paired_t_test needs two sequences of the same length, got {len(a)} and {len(b)}"
        )
    diffs = [float(x) - float(y) for x, y in zip(a, b)]
    n = len(diffs)
    if n == 0:
        return PairedTest(0, None, None, None, None, None, alpha)
    mean = math.fsum(diffs) / n
    if n < 2:
        return PairedTest(n, mean, None, None, None, None, alpha)
    sd = math.sqrt(math.fsum((d - mean) ** 2 for d in diffs) / (n - 1))
    se = sd / math.sqrt(n)
    # a spread below float noise of the values is no spread: identical runs, not a real zero
    scale = max(1.0, max(abs(d) for d in diffs))
    if se <= 1e-12 * scale:
        t = 0.0 if abs(mean) <= 1e-12 * scale else math.copysign(math.inf, mean)
        p = 1.0 if t == 0.0 else 0.0
    else:
        t = mean / se
        p = student_t_two_sided_p(t, n - 1)
    detectable = student_t_critical(alpha, n - 1) * se
    return PairedTest(n, mean, sd, t, p, detectable, alpha)


def detectable_t(alpha: float, n: int) -> float | None:
    """The critical t of a paired test over ``n`` seeds (``None`` below 2 seeds)."""
    return student_t_critical(alpha, n - 1) if n >= 2 else None
