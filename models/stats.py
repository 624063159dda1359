"""Figures that carry their evidence: proportions with exact bounds, and the gate's tests.

Every precision or accuracy gensift shows a user, or acts on, is a :class:`Proportion`:
the count it rests on, the point estimate, and an exact (Clopper–Pearson) 95 % bound.
A decision uses the bound, never the point estimate: 20 of 20 correct is a precision of
1.0, but only "at least 0.86" with 95 % confidence.

The tests here are exact binomial tests (no normal approximation, so they stay honest
on the few dozen images a user's validation set holds).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: confidence of every bound and test in gensift
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Proportion:
    """``successes`` of ``count``, with one-sided exact bounds at :data:`CONFIDENCE`."""

    successes: int
    count: int

    def __post_init__(self) -> None:
        if not 0 <= self.successes <= self.count:
            raise ValueError(f"successes {self.successes} not within 0..{self.count}")

    @property
    def value(self) -> float | None:
        """The point estimate, or None when there is nothing to estimate from."""
        return self.successes / self.count if self.count else None

    @property
    def lower(self) -> float:
        """The exact one-sided lower bound: the true rate is at least this, 95 % sure."""
        return clopper_pearson_lower(self.successes, self.count)

    @property
    def upper(self) -> float:
        """The exact one-sided upper bound."""
        return 1.0 - clopper_pearson_lower(self.count - self.successes, self.count)

    def to_json(self) -> dict[str, float | int | None]:
        return {
            "value": self.value,
            "lower": self.lower,
            "upper": self.upper,
            "successes": self.successes,
            "count": self.count,
            "confidence": CONFIDENCE,
        }

    def __str__(self) -> str:
        if not self.count:
            return "n/a (0 images)"
        return f"{self.value:.3f} (95 % bound {self.lower:.3f}, {self.successes}/{self.count})"


def clopper_pearson_lower(successes: int, count: int, confidence: float = CONFIDENCE) -> float:
    """The exact one-sided lower confidence bound of a binomial rate (0 with no successes)."""
    if successes <= 0 or count <= 0:
        return 0.0
    from scipy import stats  # here, not at import: scipy.stats costs a second to load

    return float(stats.beta.ppf(1.0 - confidence, successes, count - successes + 1))


def fewest_for_bound(target: float, confidence: float = CONFIDENCE) -> int:
    """How many images, all correct, it takes for the lower bound to reach ``target``.

    The bound of n of n is ``(1 - confidence) ** (1 / n)``: 59 images for 0.95,
    299 for 0.99. No threshold for ``target`` can be shown on fewer.
    """
    if not 0.0 < target < 1.0:
        raise ValueError(f"target must be in (0, 1), got {target}")
    return math.ceil(math.log(1.0 - confidence) / math.log(target))


def better_than_rate(successes: int, count: int, rate: float) -> float:
    """One-sided exact p-value that the true rate of ``successes``/``count`` exceeds ``rate``."""
    if count == 0:
        return 1.0
    from scipy import stats  # here, not at import: scipy.stats costs a second to load

    return float(stats.binomtest(successes, count, rate, alternative="greater").pvalue)


def worse_than_paired(only_old_right: int, only_new_right: int) -> float:
    """Exact one-sided McNemar p-value that a new model is worse than an old one.

    Only the images the two models disagree on carry evidence: ``only_old_right`` where
    the old model was right and the new one wrong, ``only_new_right`` the reverse.
    """
    discordant = only_old_right + only_new_right
    if discordant == 0:
        return 1.0
    from scipy import stats  # here, not at import: scipy.stats costs a second to load

    return float(stats.binomtest(only_old_right, discordant, 0.5, alternative="greater").pvalue)
