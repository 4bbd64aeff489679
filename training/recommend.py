"""The recommended prior of a run: of the (prior, temperature) pairs `vae-train quality` scored, the
one with the lowest Fréchet distance among those whose recall is at least RECALL_RATIO times, and
whose precision at least, those of N(0, I) at temperature 1. Issue #20's rule is the recall bound (a
learned prior may not buy its Fréchet distance with the diversity it loses); the precision bound is
ours: once temperatures are scored too, a hot enough sampler meets any recall bound with samples off
the data, and precision is what says so. N(0, I) at temperature 1 always qualifies, so there is
always an answer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

RECALL_RATIO = 0.8
REFERENCE_PRIOR = "standard_normal"
RULE = (
    "lowest Fréchet distance among the (prior, temperature) pairs whose recall is at least "
    f"{RECALL_RATIO} x, and whose precision at least, those of N(0, I) at temperature 1"
)


def figure_key(metric: str, prior: str, temperature: float) -> str:
    """The metrics.json / model.json name of a figure: fd_mixture at temperature 1 (the names the
    figures had before temperatures were scored), fd_mixture_t1.5 at 1.5."""
    suffix = "" if temperature == 1.0 else f"_t{temperature:g}"
    return f"{metric}_{prior}{suffix}"


def recommend(
    figures: dict[str, Any], priors: Sequence[str], temperatures: Sequence[float]
) -> dict[str, Any]:
    """The recommended (prior, temperature) by the rule, from figures keyed by figure_key (fd_,
    precision_, recall_); every scored pair is listed with whether it qualified."""
    reference = {m: figure_key(m, REFERENCE_PRIOR, 1.0) for m in ("precision", "recall")}
    if REFERENCE_PRIOR not in priors or not all(k in figures for k in reference.values()):
        raise ValueError(f"the rule needs N(0, I) scored at temperature 1 ({reference['recall']})")
    recall_floor = RECALL_RATIO * float(figures[reference["recall"]])
    precision_floor = float(figures[reference["precision"]])
    candidates = []
    for prior in priors:
        for temperature in temperatures:
            keys = {m: figure_key(m, prior, temperature) for m in ("fd", "precision", "recall")}
            if not all(key in figures for key in keys.values()):
                continue
            values = {m: float(figures[key]) for m, key in keys.items()}
            qualifies = values["recall"] >= recall_floor and values["precision"] >= precision_floor
            candidates.append(
                {"prior": prior, "temperature": temperature, **values, "qualifies": qualifies}
            )
    best = min((c for c in candidates if c["qualifies"]), key=lambda c: c["fd"])
    return {
        "prior": best["prior"],
        "temperature": best["temperature"],
        "fd": best["fd"],
        "precision": best["precision"],
        "recall": best["recall"],
        "recall_floor": recall_floor,
        "precision_floor": precision_floor,
        "rule": RULE,
        "candidates": candidates,
    }
