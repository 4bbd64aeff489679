"""`vae-train classifier | prior | quality`: the sample-quality classifier, the mixture prior of a
finished run, and the run's sample-quality figures. Every option also reads VAE_<OPTION>."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

SUBCOMMANDS = ("classifier", "prior", "quality")


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get("VAE_" + name.upper(), default)


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
        "prior", help="fit the Gaussian-mixture prior of a run to its training codes"
    )
    prior.add_argument("run_dir", type=Path)
    prior.add_argument("--which", choices=("best", "last"), default="best")
    prior.add_argument(
        "--components",
        type=int,
        nargs="+",
        default=[
            int(c) for c in (_env("prior_components", "10") or "10").replace(",", " ").split()
        ],
        help="component count (10, as Ghosh et al. 2020); several: the one with the best "
        "validation-set log-likelihood [VAE_PRIOR_COMPONENTS]",
    )
    prior.add_argument("--covariance", choices=("full", "diag"), default="full")
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
    quality.add_argument("--seed", type=int, default=0, help="seed of the generated latents")
    quality.add_argument("--temperature", type=float, default=1.0)
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
        elif args.command == "prior":
            from training.prior import fit_run_prior

            data_dir = None if args.data_dir is None else str(args.data_dir)
            path, mixture = fit_run_prior(
                args.run_dir, args.which, args.components, args.covariance, data_dir
            )
            result = {"output": str(path), **mixture.summary()}
        else:
            from training.quality import measure_run

            result = measure_run(
                args.run_dir, args.which, args.classifier, args.samples, args.k, args.seed,
                args.temperature, args.data_dir,
            )  # fmt: skip
    except (CheckpointError, ClassifierError, DatasetNotFound, ValueError) as exc:
        print(f"vae-train {args.command}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0
