"""The recommended-prior rule: the lowest Fréchet distance among the (prior, temperature) pairs whose
recall is at least 0.8 x, and whose precision at least, those of N(0, I) at temperature 1."""

import pytest

from training.recommend import figure_key, recommend


def _figures(rows: dict[tuple[str, float], tuple[float, float, float]]) -> dict[str, float]:
    figures = {}
    for (prior, temperature), (fd, precision, recall) in rows.items():
        for metric, value in zip(
            ("fd", "precision", "recall"), (fd, precision, recall), strict=True
        ):
            figures[figure_key(metric, prior, temperature)] = value
    return figures


def test_figure_names_keep_the_old_names_at_temperature_one():
    assert figure_key("fd", "mixture", 1.0) == "fd_mixture"
    assert figure_key("recall", "two_stage", 1.25) == "recall_two_stage_t1.25"


def test_the_best_fd_that_keeps_enough_recall_is_recommended():
    figures = _figures(
        {
            ("standard_normal", 1.0): (150.0, 0.72, 0.30),
            ("mixture", 1.0): (60.0, 0.92, 0.12),  # best FD, but recall 0.12 < 0.8 x 0.30
            ("two_stage", 1.0): (80.0, 0.85, 0.25),  # recall 0.25 >= 0.24: qualifies
            ("mixture", 1.5): (70.0, 0.80, 0.33),  # qualifies, and beats the two-stage's FD
        }
    )
    chosen = recommend(figures, ("standard_normal", "mixture", "two_stage"), (1.0, 1.5))
    assert (chosen["prior"], chosen["temperature"]) == ("mixture", 1.5)
    assert chosen["recall_floor"] == pytest.approx(0.24)
    rejected = [c for c in chosen["candidates"] if not c["qualifies"]]
    assert [(c["prior"], c["temperature"]) for c in rejected] == [("mixture", 1.0)]


def test_recall_exactly_at_the_floor_qualifies():
    figures = _figures(
        {("standard_normal", 1.0): (100.0, 0.7, 0.5), ("mixture", 1.0): (50.0, 0.9, 0.4)}
    )
    assert recommend(figures, ("standard_normal", "mixture"), (1.0,))["prior"] == "mixture"


def test_a_hot_sampler_that_loses_precision_is_not_recommended():
    figures = _figures(
        {
            ("standard_normal", 1.0): (150.0, 0.72, 0.30),
            ("mixture", 1.5): (50.0, 0.80, 0.40),
            ("mixture", 2.0): (45.0, 0.70, 0.55),  # lower FD, precision below N(0, I)'s 0.72
        }
    )
    chosen = recommend(figures, ("standard_normal", "mixture"), (1.0, 1.5, 2.0))
    assert (chosen["prior"], chosen["temperature"]) == ("mixture", 1.5)


def test_n01_is_recommended_when_no_learned_prior_keeps_the_recall():
    figures = _figures(
        {("standard_normal", 1.0): (150.0, 0.7, 0.3), ("mixture", 1.0): (50.0, 0.9, 0.1)}
    )
    chosen = recommend(figures, ("standard_normal", "mixture"), (1.0,))
    assert (chosen["prior"], chosen["temperature"]) == ("standard_normal", 1.0)


def test_the_rule_needs_n01_at_temperature_one():
    figures = _figures({("mixture", 1.0): (50.0, 0.9, 0.4)})
    with pytest.raises(ValueError, match="needs N\\(0, I\\) scored at temperature 1"):
        recommend(figures, ("mixture",), (1.0,))
