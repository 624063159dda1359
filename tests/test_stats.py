"""Exact bounds and tests, checked against values worked out by hand."""

from __future__ import annotations

import pytest

from gensift.models.stats import (
    Proportion,
    better_than_rate,
    clopper_pearson_lower,
    fewest_for_bound,
    worse_than_paired,
)


def test_all_correct_bound_is_the_closed_form() -> None:
    # P(n of n | p) = p**n, so the 95 % lower bound solves p**n = 0.05
    for n in (1, 3, 20, 59, 300):
        assert clopper_pearson_lower(n, n) == pytest.approx(0.05 ** (1 / n), rel=1e-9)
    assert clopper_pearson_lower(0, 10) == 0.0
    assert clopper_pearson_lower(0, 0) == 0.0


def test_a_perfect_score_on_few_images_is_a_weak_claim() -> None:
    three = Proportion(3, 3)
    assert three.value == 1.0
    assert three.lower < 0.37  # "1.0 precision" from 3 images means at least 0.37
    assert "3/3" in str(three)
    assert Proportion(0, 0).value is None and "0 images" in str(Proportion(0, 0))


def test_one_error_bound_matches_the_binomial_equation() -> None:
    lower = clopper_pearson_lower(19, 20)
    # at the bound, P(X >= 19 | 20, p) = 0.05
    tail = lower**20 + 20 * lower**19 * (1 - lower)
    assert tail == pytest.approx(0.05, rel=1e-6)


def test_fewest_images_for_a_bound() -> None:
    assert fewest_for_bound(0.95) == 59
    assert fewest_for_bound(0.99) == 299
    assert clopper_pearson_lower(59, 59) >= 0.95 > clopper_pearson_lower(58, 58)


def test_better_than_chance_and_paired_worse() -> None:
    # 3 of 3 right with three classes: (1/3)**3
    assert better_than_rate(3, 3, 1 / 3) == pytest.approx(1 / 27)
    assert better_than_rate(5, 10, 0.5) > 0.5
    assert better_than_rate(0, 0, 0.5) == 1.0
    # 6 disagreements, all in the old model's favour: 0.5**6
    assert worse_than_paired(6, 0) == pytest.approx(1 / 64)
    assert worse_than_paired(0, 6) == 1.0
    assert worse_than_paired(0, 0) == 1.0


def test_successes_beyond_the_count_are_refused() -> None:
    with pytest.raises(ValueError):
        Proportion(4, 3)
