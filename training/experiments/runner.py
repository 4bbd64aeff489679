"""The study registry and the command line: `python -m training.experiments <study> [--quick]`."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path

from training.experiments import ae_vs_vae, annealing, beta, cvae, latent_size, likelihood
from training.experiments.common import ExperimentSettings
from training.experiments.report import StudyResult, write_report

StudyFunction = Callable[[ExperimentSettings, Path], StudyResult]
STUDIES: dict[str, StudyFunction] = {
    "ae-vs-vae": ae_vs_vae.run,
    "beta": beta.run,
    "latent-size": latent_size.run,
    "cvae": cvae.run,
    "likelihood": likelihood.run,
    "annealing": annealing.run,
}


class UnknownStudy(ValueError):
    """A study name outside STUDIES; the message lists the allowed ones."""


def run_study(name: str, settings: ExperimentSettings, command: str = "") -> Path:
    """Run one study into <settings.out>/<name>/ and return that folder."""
    if name not in STUDIES:
        raise UnknownStudy(
            f"unknown study {name!r}; choose one of {', '.join(STUDIES)} (or 'all' on the command line)"
        )
    folder = Path(settings.out) / name
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    result = STUDIES[name](settings, folder)
    seconds = time.perf_counter() - started
    command = command or f"python -m training.experiments {name}"
    write_report(result, folder, command, settings.to_dict(), seconds)
    print(
        f"{name}: {len(result.rows)} rows, {len(result.plots)} plots in {folder} ({seconds:.0f} s)"
    )
    return folder


def parser() -> argparse.ArgumentParser:
    defaults = ExperimentSettings()
    p = argparse.ArgumentParser(
        prog="python -m training.experiments",
        description="Train the models a study needs and write its table, figures and plots into "
        "<out>/<study>/.",
    )
    p.add_argument("study", help=f"one of: {', '.join(STUDIES)}, or all")
    p.add_argument("--quick", action="store_true", help="2 epochs on 10,000 training images")
    p.add_argument("--dataset", default=defaults.dataset, help="fashion-mnist or mnist")
    p.add_argument("--data-dir", default=defaults.data_dir, help="folder of the four IDX files")
    p.add_argument("--out", default=defaults.out, help="reports folder (default: %(default)s)")
    p.add_argument(
        "--runs-dir", default=defaults.runs_dir, help="checkpoints (default: %(default)s)"
    )
    p.add_argument("--epochs", type=int, help=f"epochs per model (full mode: {defaults.epochs})")
    p.add_argument("--train-subset", type=int, help="train on the first N rows (0: all)")
    p.add_argument("--max-steps", type=int, default=0, help="cap optimiser steps per model")
    p.add_argument("--hidden-dims", type=int, nargs="+", default=list(defaults.hidden_dims))
    p.add_argument("--latent-dim", type=int, default=defaults.latent_dim)
    p.add_argument("--val-size", type=int, default=defaults.val_size)
    p.add_argument("--threads", type=int, default=defaults.threads, help="torch threads per run")
    p.add_argument("--iwae-samples", type=int, default=defaults.iwae_samples, help="0 skips IWAE")
    p.add_argument("--iwae-images", type=int, default=defaults.iwae_images)
    p.add_argument("--analysis-images", type=int, default=defaults.analysis_images)
    p.add_argument("--interpolation-pairs", type=int, default=defaults.interpolation_pairs)
    p.add_argument("--seed", type=int, default=defaults.seed)
    return p


def settings_from_args(args: argparse.Namespace) -> ExperimentSettings:
    settings = ExperimentSettings()
    settings = settings.quick_mode() if args.quick else settings
    values = {
        f.name: getattr(args, f.name)
        for f in fields(ExperimentSettings)
        if f.name != "quick" and getattr(args, f.name, None) is not None
    }
    values["hidden_dims"] = tuple(values["hidden_dims"])
    for key, value in values.items():
        setattr(settings, key, value)
    return settings


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point for `python -m training.experiments` and `vae-train experiment`."""
    p = parser()
    args = p.parse_args(argv)
    names = list(STUDIES) if args.study == "all" else [args.study]
    if any(name not in STUDIES for name in names):
        p.error(f"unknown study {args.study!r}; choose one of: {', '.join(STUDIES)}, all")
    settings = settings_from_args(args)
    given = list(sys.argv[1:] if argv is None else argv)
    rest = shlex.join(given[1:])  # the flags, recorded with the figures
    for name in names:
        command = f"python -m training.experiments {name} {rest}".strip()
        run_study(name, settings, command)
    return 0
