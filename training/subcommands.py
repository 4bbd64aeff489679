"""`vae-train classifier | prior | quality`: the sample-quality classifier, the learned priors of a
finished run (the mixture, the two-stage prior), and the run's sample-quality figures. Every option
also reads VAE_<OPTION>."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

SUBCOMMANDS = ("classifier", "prior", "quality")


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get("VAE_" + name.upper(), default)


def _refuse(name: str, value: str, allowed: str) -> NoReturn:
    """A bad VAE_* value: one line naming it and what is allowed, exit 2."""
    print(f"vae-train: VAE_{name.upper()}={value!r}: expected {allowed}", file=sys.stderr)
    raise SystemExit(2)


def _numbers(name: str, default: str, kind: type = float) -> list:
    """VAE_<NAME> as a list of numbers (spaces or commas between), else `default`'s."""
    text = _env(name, default) or default
    try:
        values = [kind(v) for v in text.replace(",", " ").split()]
    except ValueError:
        values = []
    if not values:
        _refuse(name, text, f"one or more {kind.__name__}s, like {default!r}")
    return values


def _number(name: str, default: int) -> int:
    text = _env(name, str(default)) or str(default)
    try:
        return int(text)
    except ValueError:
        _refuse(name, text, f"an integer, like {str(default)!r}")


def _choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = _env(name, default) or default
    if value not in choices:
        _refuse(name, value, f"one of {', '.join(choices)}")
    return value


def _named_path(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    return name, Path(path)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(_env("data_dir")) if _env("data_dir") else None,
        help="folder of the data set's IDX files (default: the run's own, then the usual lookup) "
        "[VAE_DATA_DIR]",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=int(_env("threads", "0") or 0),
        help="torch CPU threads (0: torch's default) [VAE_THREADS]",
    )


def build_parser() -> argparse.ArgumentParser:
    from training.two_stage import TwoStageConfig

    parser = argparse.ArgumentParser(prog="vae-train", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    classifier = commands.add_parser(
        "classifier", help="train the feature classifier that sample quality is measured with"
    )
    classifier.add_argument("--dataset", default=_env("dataset", "fashion-mnist"))
    classifier.add_argument(
        "--output", type=Path, default=None, help="default: runs/classifiers/<dataset>.pt"
    )
    classifier.add_argument("--epochs", type=int, default=2, help="2 reach ~90%% on Fashion-MNIST")
    classifier.add_argument("--batch-size", type=int, default=128)
    classifier.add_argument("--seed", type=int, default=0)
    classifier.add_argument("--max-steps", type=int, default=0, help="stop early (tests)")
    classifier.add_argument("--train-subset", type=int, default=0, help="first N rows only")
    _common(classifier)

    prior = commands.add_parser(
        "prior",
        help="fit a learned prior of a run: the Gaussian mixture of its aggregate posterior, or "
        "the two-stage prior (a second VAE over its codes)",
    )
    prior.add_argument("run_dir", type=Path)
    prior.add_argument("--which", choices=("best", "last"), default="best")
    prior.add_argument(
        "--kind",
        choices=("mixture", "two-stage"),
        default=_choice("prior_kind", "mixture", ("mixture", "two-stage")),
        help="mixture (<which>.prior.npz) or two-stage (<which>.two_stage.pt) [VAE_PRIOR_KIND]",
    )
    mixture = prior.add_argument_group("mixture")
    mixture.add_argument(
        "--components",
        type=int,
        nargs="+",
        default=_numbers("prior_components", "10", int),
        help="component count (10, as Ghosh et al. 2020); several: the one with the best "
        "validation-set log-likelihood [VAE_PRIOR_COMPONENTS]",
    )
    mixture.add_argument("--covariance", choices=("full", "diag"), default="full")
    mixture.add_argument(
        "--fit-to",
        choices=("draws", "means"),
        default=_choice("prior_fit", "draws", ("draws", "means")),
        help="draws z ~ q(z | x) of every training image (the aggregate posterior), or the "
        "posterior means alone (Ghosh et al.'s fit, the old default) [VAE_PRIOR_FIT]",
    )
    mixture.add_argument(
        "--draws",
        type=int,
        default=_number("prior_draws", 4),
        help="draws per training image with --fit-to draws [VAE_PRIOR_DRAWS]",
    )
    mixture.add_argument(
        "--output",
        type=Path,
        default=None,
        help="write the mixture here instead of <which>.prior.npz (a comparison, e.g. the "
        "means-only fit; metrics.json is then left alone)",
    )
    second = prior.add_argument_group("two-stage")
    defaults = TwoStageConfig()
    second.add_argument(
        "--epochs",
        type=int,
        default=_number("two_stage_epochs", defaults.epochs),
        help="epochs of the second stage, each a fresh draw of every training code "
        "[VAE_TWO_STAGE_EPOCHS]",
    )
    second.add_argument(
        "--hidden-dims",
        type=int,
        nargs="+",
        default=_numbers("two_stage_hidden_dims", " ".join(map(str, defaults.hidden_dims)), int),
        help="hidden layer widths of the second stage's encoder and decoder "
        "[VAE_TWO_STAGE_HIDDEN_DIMS]",
    )
    second.add_argument("--batch-size", type=int, default=defaults.batch_size)
    second.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    _common(prior)

    quality = commands.add_parser(
        "quality", help="Fréchet distance, precision and recall of a run's samples, per prior"
    )
    quality.add_argument("run_dir", type=Path)
    quality.add_argument("--which", choices=("best", "last"), default="best")
    quality.add_argument(
        "--classifier",
        type=Path,
        default=Path(_env("classifier")) if _env("classifier") else None,
        help="classifier checkpoint (default: runs/classifiers/<dataset>.pt) [VAE_CLASSIFIER]",
    )
    quality.add_argument("--samples", type=int, default=10_000, help="test and generated images")
    quality.add_argument("--k", type=int, default=3, help="neighbours of precision/recall")
    quality.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=_numbers("quality_seeds", "0 1 2", int),
        help="seeds of the generated latents; each figure is their mean [VAE_QUALITY_SEEDS]",
    )
    quality.add_argument(
        "--temperatures",
        type=float,
        nargs="+",
        default=_numbers("quality_temperatures", "1"),
        help="temperatures every prior is scored at (1 always) [VAE_QUALITY_TEMPERATURES]",
    )
    quality.add_argument(
        "--extra-mixture",
        type=_named_path,
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="also score this mixture file under NAME (a comparison; never recommended)",
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
            from training.prior import fit_run_prior

            data_dir = None if args.data_dir is None else str(args.data_dir)
            path, mixture, per_class = fit_run_prior(
                args.run_dir, args.which, args.components, args.covariance, data_dir,
                fit_to=args.fit_to, draws=args.draws, output=args.output,
            )  # fmt: skip
            result = {"output": str(path), **mixture.summary()}
            if per_class is not None:
                result["class_prior"] = per_class
        else:
            from training.quality import measure_run

            result = measure_run(
                args.run_dir, args.which, args.classifier, args.samples, args.k, args.seeds,
                args.temperatures, args.data_dir, dict(args.extra_mixture),
            )  # fmt: skip
    except (CheckpointError, ClassifierError, DatasetNotFound, ValueError) as exc:
        print(f"vae-train {args.command}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0
