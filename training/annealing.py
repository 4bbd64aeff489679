"""KL annealing: the weight on the KL term as a function of the optimiser step.

- none: beta throughout.
- linear: warm-up from 0 to beta over `kl_warmup` epochs or steps, then beta (Bowman et al. 2016).
- cyclical: the total run is split into `kl_cycles` cycles; in each, the weight rises linearly from
  0 to beta over the first `kl_cycle_ratio` of the cycle and stays at beta for the rest
  (Fu et al. 2019, "Cyclical Annealing Schedule", eq. 2 with M cycles and proportion R).

A pure function of the step, so a resumed run continues on the same schedule.
"""

from __future__ import annotations

from dataclasses import dataclass

SCHEDULES = ("none", "linear", "cyclical")
UNITS = ("epoch", "step")


@dataclass(frozen=True)
class Annealing:
    schedule: str = "none"
    beta: float = 1.0  # the weight the schedule reaches (Higgins et al. 2017 for beta > 1)
    warmup: int = 0  # linear: length of the warm-up in `unit`s
    unit: str = "epoch"
    cycles: int = 4  # cyclical: M = 4, as in Fu et al. 2019
    ratio: float = 0.5  # cyclical: R = 0.5, as in Fu et al. 2019

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown kl_anneal {self.schedule!r}; choose one of {SCHEDULES}")
        if self.unit not in UNITS:
            raise ValueError(f"unknown kl_warmup_unit {self.unit!r}; choose one of {UNITS}")
        if self.schedule == "linear" and self.warmup <= 0:
            raise ValueError("kl_anneal 'linear' needs kl_warmup > 0 (epochs or steps)")
        if self.schedule == "cyclical" and (self.cycles <= 0 or not 0 < self.ratio <= 1):
            raise ValueError(
                f"kl_anneal 'cyclical' needs kl_cycles > 0 and 0 < kl_cycle_ratio <= 1, got "
                f"{self.cycles} and {self.ratio}"
            )


def kl_weight(annealing: Annealing, step: int, steps_per_epoch: int, total_steps: int) -> float:
    """The KL weight for optimiser step `step` (0-based) of a run of `total_steps` steps."""
    if annealing.schedule == "none":
        return annealing.beta
    if annealing.schedule == "linear":
        position = step / steps_per_epoch if annealing.unit == "epoch" else float(step)
        return annealing.beta * min(1.0, position / annealing.warmup)
    period = max(total_steps / annealing.cycles, 1.0)
    tau = (step % period) / period  # position within the current cycle, in [0, 1)
    return annealing.beta * min(1.0, tau / annealing.ratio)
