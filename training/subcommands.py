"""`vae-train classifier | prior | quality`: the sample-quality classifier, the learned priors of a
finished run (the mixture, the two-stage prior), and the run's sample-quality figures. Every option
also reads a VAE_* variable, read when the command parses (a bad value exits 2 with one line, even
before torch is imported)."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from server import options as opt  # stdlib-only: the one module of server/ training may import
from server.options import StrictParser

# Defaults kept here so that parsing imports no torch; tests/test_two_stage.py checks they agree.
DEFAULT_COMPONENTS = 10  # as training.prior.DEFAULT_COMPONENTS (Ghosh et al. 2020)
DEFAULT_DRAWS = 4  # as training.prior.DEFAULT_DRAWS
TWO_STAGE_DEFAULTS = {  # as training.two_stage.TwoStageConfig
    "hidden_dims": (256, 256),
    "epochs": 200,
    "batch_size": 512,
    "learning_rate": 2e-3,
}

SUBCOMMANDS = ("classifier", "prior", "quality")
WHICH = ("best", "last")


def _numbers(text: str) -> tuple[float, ...]:
    """One or more positive numbers, separated by spaces or commas (temperatures)."""
    try:
        values = tuple(float(item) for item in text.replace(",", " ").split())
    except ValueError:
        values = ()
    if not values or not all(0 < v < float("inf") for v in values):
        raise ValueError("expected one or more positive numbers")
    return values


def _named_paths(text: str) -> tuple[tuple[str, Path], ...]:
    """NAME=PATH pairs separated by spaces (extra mixtures to score)."""
    pairs = []
    for item in text.split():
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"expected NAME=PATH pairs, got {item!r}")
        pairs.append((name, Path(path)))
    return tuple(pairs)


def _common(parser: StrictParser) -> None:
    parser.option(
        "--data-dir",
        opt.optional(opt.path),
        None,
        "folder of the data set's IDX files",
        env="VAE_DATA_DIR",
        shown_default="the run's own, then the usual lookup",
    )
    parser.option(
        "--threads", opt.integer(0), 0, "torch CPU threads (0: torch's default)", env="VAE_THREADS"
    )


def build_parser() -> StrictParser:
    """The three commands' options; every variable is read when a command parses, never here."""
    parser = StrictParser(prog="vae-train", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    classifier = commands.add_parser(
        "classifier", help="train the feature classifier that sample quality is measured with"
    )
    classifier.option(
        "--dataset", opt.nonempty, "fashion-mnist", "data set to classify", env="VAE_DATASET"
    )
    classifier.option(
        "--output",
        opt.optional(opt.path),
        None,
        "where the classifier goes",
        env="VAE_CLASSIFIER_OUTPUT",
        shown_default="runs/classifiers/<dataset>.pt",
    )
    classifier.option(
        "--epochs", opt.integer(1), 2, "2 reach ~90% on Fashion-MNIST", env="VAE_CLASSIFIER_EPOCHS"
    )
    classifier.option(
        "--batch-size", opt.integer(1), 128, "images per step", env="VAE_CLASSIFIER_BATCH_SIZE"
    )
    classifier.option("--seed", opt.integer(0), 0, "initialisation and shuffling", env="VAE_SEED")
    classifier.option(
        "--max-steps", opt.integer(0), 0, "stop early (0: no limit; tests)", env="VAE_MAX_STEPS"
    )
    classifier.option(
        "--train-subset", opt.integer(0), 0, "first N rows only (0: all)", env="VAE_TRAIN_SUBSET"
    )
    _common(classifier)

    prior = commands.add_parser(
        "prior",
        help="fit a learned prior of a run: the Gaussian mixture of its aggregate posterior, or "
        "the two-stage prior (a second VAE over its codes)",
    )
    prior.add_argument("run_dir", type=Path, help="the run directory (vae-train --run-dir)")
    prior.option("--which", opt.choice(*WHICH), "best", "checkpoint of the run", env="VAE_WHICH")
    prior.option(
        "--kind",
        opt.choice("mixture", "two-stage"),
        "mixture",
        "mixture (<which>.prior.npz) or two-stage (<which>.two_stage.pt)",
        env="VAE_PRIOR_KIND",
    )
    mixture = prior.add_argument_group("mixture")
    prior.option(
        "--components",
        opt.integers(minimum=1),
        (DEFAULT_COMPONENTS,),
        "component count (10, as Ghosh et al. 2020); several: the one with the best "
        "validation-set log-likelihood",
        env="VAE_PRIOR_COMPONENTS",
        nargs="+",
        group=mixture,
    )
    prior.option(
        "--covariance",
        opt.choice("full", "diag"),
        "full",
        "covariance of each component",
        env="VAE_PRIOR_COVARIANCE",
        group=mixture,
    )
    prior.option(
        "--fit-to",
        opt.choice("draws", "means"),
        "draws",
        "draws z ~ q(z | x) of every training image (the aggregate posterior), or the posterior "
        "means alone (Ghosh et al.'s fit, the old default)",
        env="VAE_PRIOR_FIT",
        group=mixture,
    )
    prior.option(
        "--draws",
        opt.integer(1),
        DEFAULT_DRAWS,
        "draws per training image with --fit-to draws",
        env="VAE_PRIOR_DRAWS",
        group=mixture,
    )
    prior.option(
        "--output",
        opt.optional(opt.path),
        None,
        "write the mixture here instead (a comparison, e.g. the means-only fit; metrics.json is "
        "then left alone)",
        env="VAE_PRIOR_OUTPUT",
        shown_default="<which>.prior.npz",
        group=mixture,
    )
    second = prior.add_argument_group("two-stage")
    prior.option(
        "--epochs",
        opt.integer(1),
        TWO_STAGE_DEFAULTS["epochs"],
        "epochs of the second stage, each a fresh draw of every training code",
        env="VAE_TWO_STAGE_EPOCHS",
        group=second,
    )
    prior.option(
        "--hidden-dims",
        opt.integers(minimum=1),
        TWO_STAGE_DEFAULTS["hidden_dims"],
        "hidden layer widths of the second stage's encoder and decoder",
        env="VAE_TWO_STAGE_HIDDEN_DIMS",
        nargs="+",
        group=second,
    )
    prior.option(
        "--batch-size",
        opt.integer(1),
        TWO_STAGE_DEFAULTS["batch_size"],
        "codes per step",
        env="VAE_TWO_STAGE_BATCH_SIZE",
        group=second,
    )
    prior.option(
        "--learning-rate",
        opt.number(above=0),
        TWO_STAGE_DEFAULTS["learning_rate"],
        "Adam's learning rate, cosine-decayed to 0",
        env="VAE_TWO_STAGE_LEARNING_RATE",
        group=second,
    )
    _common(prior)

    quality = commands.add_parser(
        "quality", help="Fréchet distance, precision and recall of a run's samples, per prior"
    )
    quality.add_argument("run_dir", type=Path, help="the run directory (vae-train --run-dir)")
    quality.option("--which", opt.choice(*WHICH), "best", "checkpoint of the run", env="VAE_WHICH")
    quality.option(
        "--classifier",
        opt.optional(opt.path),
        None,
        "classifier checkpoint (vae-train classifier)",
        env="VAE_CLASSIFIER",
        shown_default="runs/classifiers/<dataset>.pt",
    )
    quality.option(
        "--samples", opt.integer(1), 10_000, "test and generated images", env="VAE_QUALITY_SAMPLES"
    )
    quality.option("--k", opt.integer(1), 3, "neighbours of precision/recall", env="VAE_QUALITY_K")
    quality.option(
        "--seeds",
        opt.integers(minimum=0),
        (0, 1, 2),
        "seeds of the generated latents; each figure is their mean",
        env="VAE_QUALITY_SEEDS",
        nargs="+",
    )
    quality.option(
        "--temperatures",
        _numbers,
        (1.0,),
        "temperatures every prior is scored at (1 always)",
        env="VAE_QUALITY_TEMPERATURES",
        nargs="+",
    )
    quality.option(
        "--extra-mixture",
        _named_paths,
        (),
        "also score these mixture files, each under its NAME (a comparison; never recommended)",
        env="VAE_QUALITY_EXTRA_MIXTURE",
        metavar="NAME=PATH",
        nargs="+",
    )
    _common(quality)
    return parser


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    import torch

    from training.checkpoint import CheckpointError
    from training.classifier import ClassifierError
    from training.data import DatasetNotFound

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        if args.command == "classifier":
            from training.classifier import default_path, save_classifier, train_classifier

            output = args.output or default_path(args.dataset)
            classifier, info = train_classifier(
                args.dataset, args.data_dir, args.epochs, args.batch_size, seed=args.seed,
                max_steps=args.max_steps, train_subset=args.train_subset,
            )  # fmt: skip
            save_classifier(output, classifier, info)
            result = {"output": str(output), **info}
        elif args.command == "prior" and args.kind == "two-stage":
            from training.two_stage import TwoStageConfig, fit_run_two_stage

            config = TwoStageConfig(
                hidden_dims=tuple(args.hidden_dims), epochs=args.epochs,
                batch_size=args.batch_size, learning_rate=args.learning_rate,
            )  # fmt: skip
            data_dir = None if args.data_dir is None else str(args.data_dir)
            path, fitted = fit_run_two_stage(args.run_dir, args.which, config, data_dir)
            result = {"output": str(path), **fitted.summary()}
        elif args.command == "prior":
            from training.learned_priors import fit_run_prior

            data_dir = None if args.data_dir is None else str(args.data_dir)
            path, mixture, per_class = fit_run_prior(
                args.run_dir, args.which, list(args.components), args.covariance, data_dir,
                fit_to=args.fit_to, draws=args.draws, output=args.output,
            )  # fmt: skip
            result = {"output": str(path), **mixture.summary()}
            if per_class is not None:
                result["class_prior"] = per_class
        else:
            from training.quality import measure_run

            result = measure_run(
                args.run_dir, args.which, args.classifier, args.samples, args.k,
                list(args.seeds), list(args.temperatures), args.data_dir,
                dict(args.extra_mixture),
            )  # fmt: skip
    except (CheckpointError, ClassifierError, DatasetNotFound, ValueError) as exc:
        print(f"vae-train {args.command}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0
