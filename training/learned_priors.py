"""The learned priors of a run, as a whole: those fitted at the end of training, as the run's config
asks (the mixture, training/prior.py; per class, training/class_prior.py; the two-stage prior,
training/two_stage.py), and `vae-train prior`'s refit of the mixtures of a finished run."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from training import class_prior, prior, two_stage
from training.codes import load_run
from training.prior import FittedMixture


def check_settings(config: Any) -> None:
    """Refuse bad prior settings before training rather than after it (ValueError, one line)."""
    if config.prior_fit not in prior.FIT_TARGETS:
        raise ValueError(
            f"prior_fit {config.prior_fit!r} is not one of {prior.FIT_TARGETS}: 'draws' fits the "
            "mixture to draws from each q(z | x), 'means' to the posterior means"
        )
    if config.prior_draws < 1:
        raise ValueError(f"prior_draws must be at least 1, got {config.prior_draws}")
    if config.prior_two_stage and config.two_stage_epochs < 1:
        raise ValueError(
            f"two_stage_epochs must be at least 1, got {config.two_stage_epochs}; "
            "--prior-two-stage false skips the two-stage prior"
        )


def fit_learned_priors(config: Any, data: Any, run_dir: Path, model: torch.nn.Module) -> dict:
    """After training (called by training/train.py on the main process): fit what `config` (a
    TrainConfig) asks for to `<run_dir>/best.pt`: the mixture, for a conditional model the per-class
    mixtures too, and for an unconditional one the two-stage prior; their summaries under "prior",
    "class_prior" and "two_stage", recorded in the run's metrics.json and returned."""
    device = next(model.parameters()).device
    summary: dict[str, Any] = {}
    checkpoint = run_dir / "best.pt"
    if config.prior_components > 0 or config.prior_candidates:
        components = config.prior_candidates or (config.prior_components,)
        path, mixture = prior.fit_checkpoint_prior(
            checkpoint, data, components, seed=config.seed, device=device,
            fit_to=config.prior_fit, draws=config.prior_draws,
        )  # fmt: skip
        summary["prior"] = {"checkpoint": checkpoint.name, **mixture.summary()}
        print(
            f"mixture prior: {mixture.components} components on {mixture.fit_images} training "
            f"images' {mixture.fit_to} -> {path}",
            flush=True,
        )
        if config.model.num_classes:
            path, per_class = class_prior.fit_checkpoint_class_prior(
                checkpoint, data, components, seed=config.seed, device=device,
                fit_to=config.prior_fit, draws=config.prior_draws,
            )  # fmt: skip
            summary["class_prior"] = {"checkpoint": checkpoint.name, **per_class.summary()}
            print(f"per-class mixture prior: {per_class.components} components -> {path}")
    if config.prior_two_stage and config.model.num_classes:
        print(f"two-stage prior: skipped ({two_stage.CONDITIONAL_REFUSAL})", flush=True)
    elif config.prior_two_stage:
        settings = two_stage.TwoStageConfig(epochs=config.two_stage_epochs, seed=config.seed)
        path, fitted = two_stage.fit_checkpoint_two_stage(checkpoint, data, settings, device)
        summary["two_stage"] = {"checkpoint": checkpoint.name, **fitted.summary()}
        print(
            f"two-stage prior: {settings.epochs} epochs on {fitted.train_images} training codes, "
            f"held-out -ELBO {fitted.heldout_nelbo} -> {path}",
            flush=True,
        )
    for key, block in summary.items():
        prior.update_metrics(run_dir, key, block)
    return summary


def fit_run_prior(
    run_dir: Path,
    which: str = "best",
    components: Sequence[int] = (prior.DEFAULT_COMPONENTS,),
    covariance_type: str = "full",
    data_dir: str | None = None,
    device: str = "cpu",
    fit_to: str = "draws",
    draws: int = prior.DEFAULT_DRAWS,
    output: Path | None = None,
) -> tuple[Path, FittedMixture, dict[str, Any] | None]:
    """`vae-train prior --kind mixture`: fit the mixture of `<run_dir>/<which>.pt` on the run's own
    data splits, and for a conditional model its per-class mixtures too (training/class_prior.py);
    record their summaries in the run's metrics.json when they are the run's own prior files (an
    `output` elsewhere is a comparison, e.g. the means-only baseline, and leaves it alone). Returns
    the mixture's file and fit, and the per-class fit's summary or None."""
    checkpoint, config, data = load_run(run_dir, which, data_dir, device)
    path, mixture = prior.fit_checkpoint_prior(
        checkpoint, data, components, covariance_type, config.seed, device, fit_to, draws, output
    )
    if output is not None and output != prior.prior_path(checkpoint):
        return path, mixture, None
    prior.update_metrics(run_dir, "prior", {"checkpoint": checkpoint.name, **mixture.summary()})
    if not config.model.num_classes:
        return path, mixture, None
    class_path, per_class = class_prior.fit_checkpoint_class_prior(
        checkpoint, data, components, covariance_type, config.seed, device, fit_to, draws
    )
    block = {"checkpoint": checkpoint.name, "output": str(class_path), **per_class.summary()}
    prior.update_metrics(run_dir, "class_prior", block)
    return path, mixture, block
