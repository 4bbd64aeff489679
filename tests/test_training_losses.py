"""The objective: analytic KL, the reparameterisation's gradients, the two likelihoods."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from training.losses import kl_divergence, negative_elbo, reconstruction_loss
from training.models import ModelConfig, build_model


def test_kl_is_zero_when_the_posterior_is_the_prior() -> None:
    zeros = torch.zeros(4, 20)
    assert torch.equal(kl_divergence(zeros, zeros), torch.zeros(4))


def test_kl_matches_a_monte_carlo_estimate() -> None:
    generator = torch.Generator().manual_seed(0)
    mean = torch.randn(3, 5, generator=generator)
    log_variance = torch.randn(3, 5, generator=generator) * 0.5
    std = (0.5 * log_variance).exp()
    posterior = torch.distributions.Normal(mean, std)
    prior = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(std))
    z = posterior.sample((200_000,))  # (S, 3, 5)
    estimate = (posterior.log_prob(z) - prior.log_prob(z)).sum(-1).mean(0)  # (3,)
    assert torch.allclose(kl_divergence(mean, log_variance), estimate, atol=0.03)


def test_gradients_reach_mean_and_log_variance_through_the_sample() -> None:
    model = build_model(ModelConfig(hidden_dims=(8,), latent_dim=3))
    mean = torch.zeros(2, 3, requires_grad=True)
    log_variance = torch.zeros(2, 3, requires_grad=True)
    model.reparameterise(mean, log_variance).pow(2).sum().backward()
    assert mean.grad is not None and log_variance.grad is not None
    assert bool(mean.grad.abs().sum() > 0) and bool(log_variance.grad.abs().sum() > 0)


def test_bernoulli_loss_from_logits_equals_binary_cross_entropy() -> None:
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 1, 28, 28, generator=generator)
    target = torch.rand(4, 1, 28, 28, generator=generator)
    expected = F.binary_cross_entropy(torch.sigmoid(logits), target, reduction="none")
    got = reconstruction_loss(torch.sigmoid(logits), target, "bernoulli", logits)
    assert torch.allclose(got, expected.flatten(1).sum(1), rtol=1e-5)


def test_gaussian_loss_is_the_summed_squared_error() -> None:
    reconstruction = torch.full((2, 3, 4, 4), 0.25)
    target = torch.full((2, 3, 4, 4), 0.75)
    assert torch.allclose(
        reconstruction_loss(reconstruction, target, "gaussian"), torch.full((2,), 12.0)
    )


def test_beta_weights_only_the_kl_term() -> None:
    model = build_model(ModelConfig(hidden_dims=(8,), latent_dim=3))
    images = torch.rand(5, 1, 28, 28)
    torch.manual_seed(0)
    output = model(images)
    one, four = (negative_elbo(output, images, "bernoulli", b) for b in (1.0, 4.0))
    assert torch.allclose(four.loss - one.loss, 3 * one.kl, atol=1e-3)  # float32 sums of ~550
