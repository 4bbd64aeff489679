"""`vae-train classifier | prior | quality`: the sample-quality classifier, the mixture prior of a
finished run, and the run's sample-quality figures. Every option also reads a VAE_* variable, read
when the command parses (a bad value exits 2 with one line, even before torch is imported)."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from server import options as opt  # stdlib-only: the one module of server/ training may import
from server.options import StrictParser

DEFAULT_COMPONENTS = 10  # as training.prior.DEFAULT_COMPONENTS (Ghosh et al. 2020); no torch here

SUBCOMMANDS = ("classifier", "prior", "quality")
WHICH = ("best", "last")


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
        "prior", help="fit the Gaussian-mixture prior of a run to its training codes"
    )
    prior.add_argument("run_dir", type=Path, help="the run directory (vae-train --run-dir)")
    prior.option("--which", opt.choice(*WHICH), "best", "checkpoint of the run", env="VAE_WHICH")
    prior.option(
        "--components",
        opt.integers(minimum=1),
        (DEFAULT_COMPONENTS,),
        "component count (10, as Ghosh et al. 2020); several: the one with the best "
        "validation-set log-likelihood",
        env="VAE_PRIOR_COMPONENTS",
        nargs="+",
    )
    prior.option(
        "--covariance",
        opt.choice("full", "diag"),
        "full",
        "covariance of each component",
        env="VAE_PRIOR_COVARIANCE",
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
    quality.option("--seed", opt.integer(0), 0, "seed of the generated latents", env="VAE_SEED")
    quality.option(
        "--temperature",
        opt.number(above=0),
        1.0,
        "scale of the priors' spread",
        env="VAE_TEMPERATURE",
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
        elif args.command == "prior":
            from training.prior import fit_run_prior

            data_dir = None if args.data_dir is None else str(args.data_dir)
            path, mixture = fit_run_prior(
                args.run_dir, args.which, list(args.components), args.covariance, data_dir
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
