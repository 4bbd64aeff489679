"""The negative ELBO and its terms, per example, summed over pixels and latent dimensions.

loss = reconstruction + beta * KL, where
- reconstruction = -log p(x | z): binary cross-entropy for the Bernoulli likelihood, or the summed
  squared error for the Gaussian likelihood (its negative log-density with variance 1/2, up to a
  constant);
- KL = KL(N(mean, diag(exp(log_variance))) || N(0, I))
     = -1/2 * sum(1 + log_variance - mean^2 - exp(log_variance))
  in closed form (Kingma & Welling 2014, Appendix B);
- beta = 1 gives the ELBO; beta > 1 is the beta-VAE objective (Higgins et al. 2017); annealing
  (training/annealing.py) moves beta over training.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from training.models.base import ModelOutput


def reconstruction_loss(
    reconstruction: torch.Tensor,
    target: torch.Tensor,
    likelihood: str,
    logits: torch.Tensor | None = None,
) -> torch.Tensor:
    """-log p(x | z) per example, (N,). With `logits` the Bernoulli term is BCE-with-logits, which
    stays exact where the sigmoid saturates (plain BCE clamps log(0) to -100)."""
    if likelihood == "bernoulli" and logits is not None:
        per_pixel = F.binary_cross_entropy_with_logits(logits.float(), target, reduction="none")
    elif likelihood == "bernoulli":
        per_pixel = F.binary_cross_entropy(reconstruction.float(), target, reduction="none")
    elif likelihood == "gaussian":
        per_pixel = (reconstruction.float() - target).pow(2)
    else:
        raise ValueError(f"unknown likelihood {likelihood!r}; use 'bernoulli' or 'gaussian'")
    return per_pixel.flatten(1).sum(dim=1)


def kl_divergence(mean: torch.Tensor, log_variance: torch.Tensor) -> torch.Tensor:
    """KL(q(z|x) || N(0, I)) per example, (N,) (Kingma & Welling 2014, Appendix B)."""
    mean, log_variance = mean.float(), log_variance.float()
    return -0.5 * (1.0 + log_variance - mean.pow(2) - log_variance.exp()).sum(dim=1)


@dataclass
class LossTerms:
    """Batch means of the per-example terms; `loss` is what is minimised."""

    loss: torch.Tensor
    reconstruction: torch.Tensor
    kl: torch.Tensor

    def as_floats(self) -> dict[str, float]:
        return {
            "loss": float(self.loss.detach()),
            "reconstruction": float(self.reconstruction.detach()),
            "kl": float(self.kl.detach()),
        }


def negative_elbo(
    output: ModelOutput, target: torch.Tensor, likelihood: str, beta: float = 1.0
) -> LossTerms:
    """reconstruction + beta * KL, averaged over the batch (per-image nats)."""
    logits = output.extras.get("logits")
    reconstruction = reconstruction_loss(output.reconstruction, target, likelihood, logits)
    if output.log_variance is None:  # deterministic autoencoder: no KL term
        kl = torch.zeros_like(reconstruction)
    else:
        kl = kl_divergence(output.mean, output.log_variance)
    return LossTerms(
        loss=(reconstruction + beta * kl).mean(), reconstruction=reconstruction.mean(), kl=kl.mean()
    )
