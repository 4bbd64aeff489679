"""KL annealing schedules: linear warm-up in epochs or steps, and cyclical (Fu et al. 2019)."""

from __future__ import annotations

import pytest

from training.annealing import Annealing, kl_weight


def test_no_schedule_keeps_beta() -> None:
    assert kl_weight(Annealing(beta=4.0), step=0, steps_per_epoch=10, total_steps=100) == 4.0


def test_linear_warmup_over_epochs_rises_from_zero_to_beta() -> None:
    schedule = Annealing("linear", beta=2.0, warmup=2, unit="epoch")
    weights = [kl_weight(schedule, s, steps_per_epoch=10, total_steps=100) for s in (0, 10, 20, 50)]
    assert weights == [0.0, 1.0, 2.0, 2.0]


def test_linear_warmup_over_steps_counts_steps() -> None:
    schedule = Annealing("linear", warmup=4, unit="step")
    weights = [kl_weight(schedule, s, steps_per_epoch=100, total_steps=1000) for s in range(6)]
    assert weights == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]


def test_cyclical_restarts_from_zero_each_cycle_and_holds_beta_for_the_second_half() -> None:
    schedule = Annealing("cyclical", cycles=2, ratio=0.5)
    weights = [kl_weight(schedule, s, steps_per_epoch=10, total_steps=8) for s in range(8)]
    assert weights == [0.0, 0.5, 1.0, 1.0, 0.0, 0.5, 1.0, 1.0]


def test_unknown_schedule_names_the_choices() -> None:
    with pytest.raises(ValueError, match=r"none.*linear.*cyclical"):
        Annealing("exponential")


def test_linear_without_a_warmup_length_is_refused() -> None:
    with pytest.raises(ValueError, match="kl_warmup > 0"):
        Annealing("linear", warmup=0)
