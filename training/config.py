"""`TrainConfig`: every setting of one training run, each also a `vae-train` flag and a VAE_<FIELD>
variable. It lives apart from the loop (training/train.py) so that the prior fit, the experiments and
the command line can read a run's settings without importing the loop."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from training.annealing import Annealing
from training.models import ModelConfig


@dataclass
class TrainConfig:
    """One training run; every field is also a `vae-train` flag and a VAE_<FIELD> variable."""

    dataset: str = "fashion-mnist"  # fashion-mnist, mnist or celeba (any folder of images)
    data_dir: str = ""  # empty: VAE_DATA_DIR, the Debian package's folder, then download
    run_dir: str = "runs/mlp-vae"
    epochs: int = 10
    # Per process: under torchrun the global batch is batch_size x WORLD_SIZE, and the gradient is
    # its mean (DDP averages over ranks), so N processes of B match one process of N*B. The
    # learning rate is used as given, never scaled with the process count.
    batch_size: int = 128  # the classic example's batch size
    learning_rate: float = 1e-3  # Adam's usual default, as in the classic example
    lr_schedule: str = "constant"  # or cosine: decay to 0 over the run's steps
    beta: float = 1.0  # weight of the KL term; 1 is the ELBO, > 1 a beta-VAE (Higgins et al. 2017)
    kl_anneal: str = "none"  # none, linear (warm-up) or cyclical (Fu et al. 2019)
    kl_warmup: int = 0  # linear: warm-up length in kl_warmup_unit
    kl_warmup_unit: str = "epoch"  # epoch or step
    kl_cycles: int = 4  # cyclical: M, as in Fu et al. 2019
    kl_cycle_ratio: float = 0.5  # cyclical: R, the rising share of each cycle (Fu et al. 2019)
    seed: int = 0
    val_size: int = 5000  # rows held out of the training set for choosing the best checkpoint
    test_size: int = 0  # image folders without an official split: rows held out for test
    train_subset: int = 0  # train on the first N training rows only (0: all); for quick checks
    max_steps: int = 0  # stop after this many optimiser steps in total (0: no limit)
    eval_batch_size: int = 1000
    device: str = "auto"  # auto picks cuda when available
    threads: int = 0  # CPU threads for torch (0: its default); 1 suits small models on busy CPUs
    amp: bool = False  # mixed precision: float16 with loss scaling on CUDA, bfloat16 on CPU
    compile: bool = False  # torch.compile the training forward pass
    grad_clip: float = 0.0  # clip the gradient's global norm to this (0: off)
    # DataLoader workers for image folders (tensor data sets need none); -1: one per core this
    # process may run on, at most 4, so a small machine is not asked for more than it has.
    num_workers: int = -1
    progress: bool = True  # a progress bar with the running loss (drawn on a terminal only)
    tensorboard: bool = True  # scalars under <run_dir>/tensorboard
    figures: bool = True  # pictures in the run directory after training
    iwae_samples: int = 50  # k of the final IWAE bound (Burda et al. 2015 use 5000); 0 skips it
    iwae_images: int = 1000  # test images the IWAE bound averages over (0: all)
    resume: bool = False  # continue from <run_dir>/last.pt: model, optimiser, scheduler, epoch
    # Continue from <run_dir>/last.pt when there is one, else start: what a restarted pod wants.
    # A torchrun restart (--max-restarts) resumes so even without it.
    auto_resume: bool = False
    # After training, a Gaussian mixture with this many components is fitted to the training set's
    # aggregate posterior under best.pt, the learned prior (Ghosh et al. 2020 use 10); 0 skips it.
    prior_components: int = 10
    # When set, the mixture's component count is the one of these with the best validation-set
    # log-likelihood, and prior_components is ignored.
    prior_candidates: tuple[int, ...] = ()
    # What the mixture is fitted to: "draws" z ~ q(z | x) of every training image, prior_draws of
    # each (the aggregate posterior), or the posterior "means" alone (the earlier fit).
    prior_fit: str = "draws"
    prior_draws: int = 4
    # After training, the two-stage prior (Dai & Wipf 2019): a second VAE over best.pt's codes,
    # trained for two_stage_epochs; false skips it.
    prior_two_stage: bool = True
    two_stage_epochs: int = 200
    model: ModelConfig = field(default_factory=ModelConfig)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["model"] = self.model.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """The inverse of to_dict, as a checkpoint stores it; unknown keys (newer fields) are left out."""
        known = {f.name: f for f in fields(cls) if f.name != "model"}
        values = {k: v for k, v in data.items() if k in known}
        for name, value in values.items():
            if isinstance(value, list):  # tuples come back from a checkpoint or JSON as lists
                values[name] = tuple(value)
        return cls(**values, model=ModelConfig.from_dict(data.get("model", {})))

    def annealing(self) -> Annealing:
        return Annealing(
            self.kl_anneal, self.beta, self.kl_warmup, self.kl_warmup_unit,
            self.kl_cycles, self.kl_cycle_ratio,
        )  # fmt: skip
