"""The two-stage prior (Dai & Wipf 2019, "Diagnosing and Enhancing VAE Models", section 4): after
training, a second small VAE is trained on the first model's latent codes z ~ q(z | x); its decoder
maps noise to z, which the first decoder turns into an image. Written beside the checkpoint as
`<checkpoint>.two_stage.pt` (tensors and plain values, read with weights_only=True).

Why it can beat a mixture: the aggregate posterior of a VAE is neither N(0, I) (the first stage's
prior, which it fails to fill) nor a few ellipsoids (a 10-component mixture); the second stage learns
a smooth map from N(0, I) onto it. As in Dai & Wipf, its latent u is as wide as the codes and its
Gaussian decoder p(z | u) = N(mu(u), gamma) learns gamma. Where our codes differ from theirs (they
fill their space rather than lie near a manifold), so do our choices, each measured
(reports/sample-quality): one gamma per code dimension, and samples that are draws of p(z | u), not
its mean (TwoStageConfig says why); besides, the codes are standardised per dimension (autoencoder
codes are not unit-scale), each epoch draws fresh z ~ q(z | x) from the stored posteriors, the KL
weight warms up, the learning rate decays on a cosine, and the weights kept are those of the epoch
with the lowest held-out loss.
"""

from __future__ import annotations

import copy
import itertools
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from training.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint, sha256_file
from training.codes import Codes, load_run, split_codes

FORMAT = "vae-service-two-stage"
# A conditional model's codes depend on the label: pooled over classes they are close to N(0, I),
# so a second stage of the pooled codes would sample much as N(0, I) does (the pooled mixture was
# measured at N(0, I)'s Fréchet distance, reports/sample-quality); a label-conditioned second stage
# is not built. Its learned prior is the per-class mixture (training/class_prior.py).
CONDITIONAL_REFUSAL = (
    "the two-stage prior is for unconditional models: a conditional model's codes depend on the "
    "label, and its learned prior is the per-class mixture (`vae-train prior <run-dir>`)"
)
FORMAT_VERSION = 1
GAMMAS = ("scalar", "per_dim")
LOG_GAMMA_MIN = -12.0  # gamma >= 6e-6: keeps 1 / gamma finite in float32 once the map is exact


@dataclass
class TwoStageConfig:
    """The second stage's network and training; `vae-train prior --kind two-stage` sets each."""

    hidden_dims: tuple[int, ...] = (256, 256)  # per MLP (encoder and decoder alike)
    # Each epoch is a fresh draw z ~ q(z | x) of every training image. On the conv VAE's codes
    # (reports/sample-quality, seed 0) 60 epochs gave a Fréchet distance of 92.5 at temperature 1
    # and 51.6 at 1.5, 200 epochs 71.8 and 37.1: still improving, at ~1.3 s an epoch on one core.
    epochs: int = 200
    batch_size: int = 512
    learning_rate: float = 2e-3  # Adam, cosine-decayed to 0 over the run
    # Dai & Wipf learn one gamma; "per_dim" learns one per code dimension, so dimensions the first
    # stage left unused (pure N(0, 1) noise in its codes) need not be encoded to shrink the others'.
    gamma: str = "per_dim"
    # Sampling: z = the decoder's mean at u (Dai & Wipf's choice, right once gamma -> 0 on codes
    # that lie on a manifold), or, when true, that mean plus sqrt(gamma) * eps: a draw of p(z | u)
    # itself, the noise then (u, eps), 2 D wide. Our codes fill their space (unused dimensions are
    # N(0, 1) noise, used ones keep each posterior's spread), gamma stays far from 0, and the mean
    # alone collapses onto a fraction of the codes' spread (tests/test_two_stage.py measures it).
    output_noise: bool = True
    fit_to: str = "draws"  # fresh z ~ q(z | x) each epoch, or the posterior "means"
    # The KL term's weight rises linearly from 0 to 1 over these first epochs (Bowman et al. 2016):
    # a second stage that starts at the prior's optimum (encode nothing, gamma = 1) stays there.
    kl_warmup_epochs: int = 10
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["hidden_dims"] = list(self.hidden_dims)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TwoStageConfig:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        config = cls(**known)
        config.hidden_dims = tuple(int(h) for h in config.hidden_dims)
        return config


def two_stage_path(checkpoint: Path) -> Path:
    """Where the second stage of `checkpoint` lives: runs/x/best.pt -> runs/x/best.two_stage.pt."""
    return checkpoint.with_suffix(".two_stage.pt")


def _mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers through `sizes`, SiLU between them, none after the last."""
    layers: list[nn.Module] = []
    for n_in, n_out in itertools.pairwise(sizes):
        layers += [nn.Linear(n_in, n_out), nn.SiLU()]
    return nn.Sequential(*layers[:-1])


class SecondStageVAE(nn.Module):
    """A VAE over codes z (N, D) with latent u (N, D), working on standardised codes
    (z - code_mean) / code_std; `decode` undoes the standardisation, so it maps u to z itself."""

    def __init__(
        self,
        dim: int,
        hidden_dims: tuple[int, ...],
        code_mean: torch.Tensor,
        code_std: torch.Tensor,
        gamma: str = "scalar",
        output_noise: bool = False,
    ) -> None:
        super().__init__()
        if gamma not in GAMMAS:
            raise ValueError(f"gamma {gamma!r} is not one of {GAMMAS}")
        self.dim = dim
        self.output_noise = output_noise
        self.encoder = _mlp([dim, *hidden_dims, 2 * dim])  # -> mean and log-variance of q(u | z)
        self.decoder = _mlp([dim, *hidden_dims, dim])  # -> mean of p(z | u), standardised
        # Dai & Wipf's gamma: p(z | u) = N(decoder(u), gamma I), gamma learned (as log gamma).
        self.log_gamma = nn.Parameter(torch.zeros(() if gamma == "scalar" else (dim,)))
        self.register_buffer("code_mean", code_mean.float().clone())  # (D,)
        self.register_buffer("code_std", code_std.float().clone())  # (D,)

    def standardise(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.code_mean) / self.code_std

    def encode(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, D) codes -> mean and log-variance (N, D) of q(u | z)."""
        mean, log_variance = self.encoder(self.standardise(z)).chunk(2, dim=1)
        return mean, log_variance.clamp(-30.0, 20.0)

    def decoder_outputs(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, D) u -> the standardised mean (N, D) of p(z | u) and its log gamma (() or (D,))."""
        return self.decoder(u), self.log_gamma.clamp(min=LOG_GAMMA_MIN)

    def decode(self, u: torch.Tensor) -> torch.Tensor:
        """(N, D) u -> (N, D) z, the mean of p(z | u), in the codes' own units."""
        return self.code_mean + self.code_std * self.decoder_outputs(u)[0]

    @torch.no_grad()
    def gamma(self) -> torch.Tensor:
        return self.log_gamma.clamp(min=LOG_GAMMA_MIN).exp()

    @property
    def noise_dim(self) -> int:
        """Standard normals per sample: u (D), and eps (D) when the output is a draw."""
        return 2 * self.dim if self.output_noise else self.dim

    def generate(self, noise: torch.Tensor) -> torch.Tensor:
        """(N, noise_dim) standard normals (times the temperature) -> (N, D) latents: the decoder's
        mean at u = noise[:, :D], plus code_std * sqrt(gamma) * noise[:, D:] when output_noise.
        Deterministic given the noise: this is prior_decoder.onnx."""
        mean, log_gamma = self.decoder_outputs(noise[:, : self.dim])
        if self.output_noise:
            mean = mean + torch.exp(0.5 * log_gamma) * noise[:, self.dim :]
        return self.code_mean + self.code_std * mean

    def negative_elbo(self, z: torch.Tensor, kl_weight: float = 1.0) -> torch.Tensor:
        """Per-code -ELBO (N,) of codes z (N, D) in the codes' own units (nats).

        -log p(z | u) = sum_d [(z~_d - mu_d(u))^2 / (2 gamma_d) + 1/2 log(2 pi gamma_d)
        + log code_std_d] for the standardised z~ (the last term is the standardisation's
        Jacobian), plus KL(q(u | z) || N(0, I)) = 1/2 sum(mean^2 + var - log var - 1) (Kingma &
        Welling 2014, Appendix B): Dai & Wipf 2019, eq. (1), with gamma learned; `kl_weight` < 1
        only during the warm-up.
        """
        mean, log_variance = self.encode(z)
        u = mean + torch.exp(0.5 * log_variance) * torch.randn_like(mean)
        decoded, log_gamma = self.decoder_outputs(u)
        residual = self.standardise(z) - decoded
        reconstruction = 0.5 * (
            residual.pow(2) / log_gamma.exp() + math.log(2 * math.pi) + log_gamma
        ).expand_as(residual).sum(dim=1)
        kl = 0.5 * (mean.pow(2) + log_variance.exp() - log_variance - 1.0).sum(dim=1)
        return reconstruction + kl_weight * kl + self.code_std.log().sum()


@dataclass
class FittedTwoStage:
    """A trained second stage and what its training measured."""

    model: SecondStageVAE
    config: TwoStageConfig
    train_images: int
    heldout_images: int
    heldout_nelbo: float | None  # mean -ELBO per held-out code draw (nats), best epoch
    best_epoch: int
    train_losses: list[float]
    heldout_losses: list[float]
    fit_to: str  # "draws" from q(z | x), or "means" (an autoencoder's codes)
    active_dims: int  # dimensions of u that carry information (see active_dims)
    seconds: float

    def summary(self) -> dict[str, Any]:
        return {
            "latent_dim": self.model.dim,
            **{k: v for k, v in self.config.to_dict().items() if k != "seed"},
            "fit_to": self.fit_to,
            "train_images": self.train_images,
            "heldout_images": self.heldout_images,
            "heldout_nelbo": self.heldout_nelbo,
            "best_epoch": self.best_epoch,
            "gamma": [round(float(g), 6) for g in self.model.gamma().flatten()],
            "noise_dim": self.model.noise_dim,
            "active_dims": self.active_dims,
            "train_losses": [round(v, 4) for v in self.train_losses],
            "heldout_losses": [round(v, 4) for v in self.heldout_losses],
            "seconds": round(self.seconds, 1),
        }


@torch.no_grad()
def active_dims(model: SecondStageVAE, z: torch.Tensor, threshold: float = 0.01) -> int:
    """How many of u's dimensions carry information about codes z (N, D): those where the variance
    over codes of E[u_d | z] exceeds `threshold` (active units, Burda et al. 2015, section 5.2)."""
    mean, _ = model.encode(z)
    return int((mean.var(dim=0) > threshold).sum())


def _draw(codes: Codes, generator: torch.Generator) -> torch.Tensor:
    """One z ~ q(z | x) per image (N, D) float32: the codes themselves for an autoencoder."""
    means = torch.from_numpy(codes.means).float()
    if codes.log_variances is None:
        return means
    std = torch.from_numpy(np.exp(0.5 * codes.log_variances)).float()
    return means + std * torch.randn(means.shape, generator=generator)


@torch.no_grad()
def _heldout_loss(model: SecondStageVAE, z: torch.Tensor, batch: int = 4096) -> float:
    total = sum(float(model.negative_elbo(z[i : i + batch]).sum()) for i in range(0, len(z), batch))
    return total / len(z)


def train_two_stage(
    codes: Codes, heldout: Codes | None, config: TwoStageConfig | None = None
) -> FittedTwoStage:
    """Train the second stage on fresh draws of `codes` each epoch; keep the epoch whose held-out
    -ELBO (one fixed draw per held-out image; the training codes' own without a held-out split) is
    lowest."""
    config = config or TwoStageConfig()
    if config.epochs < 1 or config.batch_size < 1 or not config.hidden_dims:
        raise ValueError(
            f"two-stage training needs epochs >= 1, batch_size >= 1 and at least one hidden layer, "
            f"got {config}"
        )
    if config.fit_to not in ("draws", "means"):
        raise ValueError(f"fit_to {config.fit_to!r} is not one of ('draws', 'means')")
    if config.fit_to == "means":  # the posterior means alone: the codes without their spread
        codes = Codes(codes.means, None)
        heldout = None if heldout is None else Codes(heldout.means, None)
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    # Standardise by the aggregate posterior's moments: Var z = Var(mean) + E[var] per dimension.
    spread = codes.means.var(axis=0)
    if codes.log_variances is not None:
        spread = spread + np.exp(codes.log_variances).mean(axis=0)
    code_std = torch.from_numpy(np.sqrt(np.maximum(spread, 1e-12)))
    model = SecondStageVAE(
        codes.dim, config.hidden_dims, torch.from_numpy(codes.means.mean(axis=0)), code_std,
        config.gamma, config.output_noise,
    )  # fmt: skip
    optimiser = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    steps_per_epoch = math.ceil(len(codes) / config.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimiser, T_max=config.epochs * steps_per_epoch
    )
    heldout_z = _draw(heldout if heldout is not None else codes, torch.Generator().manual_seed(1))
    best_state, best_loss, best_epoch = None, math.inf, 0
    train_losses, heldout_losses = [], []
    for epoch in range(1, config.epochs + 1):
        model.train()
        z = _draw(codes, generator)  # (N, D): a fresh draw of the aggregate posterior
        order = torch.randperm(len(z), generator=generator)
        running = 0.0
        kl_weight = (
            min(1.0, (epoch - 1) / config.kl_warmup_epochs) if config.kl_warmup_epochs else 1.0
        )
        for start in range(0, len(z), config.batch_size):
            batch = z[order[start : start + config.batch_size]]
            loss = model.negative_elbo(batch, kl_weight).mean()
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            running += float(loss.detach()) * len(batch)
        train_losses.append(running / len(z))
        model.eval()
        heldout_losses.append(_heldout_loss(model, heldout_z))
        if heldout_losses[-1] < best_loss:
            best_loss, best_epoch = heldout_losses[-1], epoch
            best_state = copy.deepcopy(model.state_dict())
    if best_state is not None:  # None only if every held-out loss was NaN: keep the last epoch
        model.load_state_dict(best_state)
    model.eval()
    return FittedTwoStage(
        model=model,
        config=config,
        train_images=len(codes),
        heldout_images=0 if heldout is None else len(heldout),
        heldout_nelbo=None if heldout is None else best_loss,
        best_epoch=best_epoch,
        train_losses=train_losses,
        heldout_losses=heldout_losses,
        fit_to="means" if codes.log_variances is None else "draws",  # an AE's codes are means
        active_dims=active_dims(model, heldout_z),
        seconds=time.perf_counter() - started,
    )


def save_two_stage(path: Path, fitted: FittedTwoStage, checkpoint_sha256: str) -> None:
    """Write the second stage atomically as tensors and plain values (weights_only loading)."""
    document = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "latent_dim": fitted.model.dim,
        "config": fitted.config.to_dict(),
        "state": {k: v.detach().cpu() for k, v in fitted.model.state_dict().items()},
        "checkpoint_sha256": checkpoint_sha256,
        "summary": fitted.summary(),
    }
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(document, temporary)
    os.replace(temporary, path)


def load_two_stage(path: Path) -> tuple[SecondStageVAE, str, dict[str, Any]]:
    """The second stage (eval mode), the sha256 of the checkpoint it was fitted to, its summary."""
    try:
        document = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling refusals, truncation, not a zip ...
        raise CheckpointError(f"{path}: not a readable two-stage prior ({exc})") from exc
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a two-stage prior written by vae-train ({FORMAT!r})")
    if int(document.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: format {document['format_version']} is newer than this code"
        )
    config = TwoStageConfig.from_dict(document["config"])
    dim = int(document["latent_dim"])
    state = document["state"]
    model = SecondStageVAE(
        dim, config.hidden_dims, state["code_mean"], state["code_std"], config.gamma,
        config.output_noise,
    )  # fmt: skip
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit the second stage: {exc}") from exc
    return model.eval(), str(document["checkpoint_sha256"]), dict(document["summary"])


def noise(count: int, dim: int, seed: int, temperature: float = 1.0) -> np.ndarray:
    """(count, dim) float32 draws of N(0, temperature^2 I), made exactly as the server draws N(0, I)
    latents (seed scheme 2, server/dataplane/latent_space.py): numpy's Philox keyed by the seed,
    Generator(Philox(key=seed)).standard_normal in float32, then multiplied in place by
    float32(temperature) when it is not 1."""
    u = np.random.Generator(np.random.Philox(key=seed)).standard_normal((count, dim), np.float32)
    if temperature != 1.0:
        u *= np.float32(temperature)
    return u


@torch.no_grad()
def sample_two_stage(
    model: SecondStageVAE, count: int, seed: int, temperature: float = 1.0
) -> np.ndarray:
    """(count, D) float32 latents of the two-stage prior: generate(noise) for noise ~
    N(0, temperature^2 I) of model.noise_dim per row, drawn as the server draws it."""
    return model.generate(
        torch.from_numpy(noise(count, model.noise_dim, seed, temperature))
    ).numpy()


def fit_checkpoint_two_stage(
    checkpoint: Path,
    data,
    config: TwoStageConfig | None = None,
    device: torch.device | str = "cpu",
) -> tuple[Path, FittedTwoStage]:
    """Train the second stage of `checkpoint` on the posteriors of `data` (the run's DataBundle),
    the validation split held out, and write it beside the checkpoint."""
    model = model_from_checkpoint(load_checkpoint(checkpoint)).to(device)
    codes, heldout = split_codes(model, data)
    fitted = train_two_stage(codes, heldout, config)
    path = two_stage_path(checkpoint)
    save_two_stage(path, fitted, sha256_file(checkpoint))
    return path, fitted


def fit_run_two_stage(
    run_dir: Path,
    which: str = "best",
    config: TwoStageConfig | None = None,
    data_dir: str | None = None,
    device: str = "cpu",
) -> tuple[Path, FittedTwoStage]:
    """`vae-train prior --kind two-stage`: train the second stage of `<run_dir>/<which>.pt` on the
    run's own splits and record its summary under "two_stage" in the run's metrics.json."""
    from training.prior import update_metrics

    checkpoint, run_config, data = load_run(run_dir, which, data_dir, device)
    if run_config.model.num_classes:
        raise ValueError(CONDITIONAL_REFUSAL)
    config = config or TwoStageConfig(seed=run_config.seed)
    path, fitted = fit_checkpoint_two_stage(checkpoint, data, config, device)
    update_metrics(run_dir, "two_stage", {"checkpoint": checkpoint.name, **fitted.summary()})
    return path, fitted
