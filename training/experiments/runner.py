"""The study registry and the command line: `python -m training.experiments <study> [--quick]`."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path

from server.options import StrictParser
from training.cli_options import add_fields
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


def parser(prog: str = "python -m training.experiments") -> StrictParser:
    """One option per ExperimentSettings field (variable VAE_EXPERIMENT_<FIELD>), and the study."""
    p = StrictParser(
        prog=prog,
        description="Train the models a study needs and write its table, figures and plots into "
        "<out>/<study>/. `vae-train experiment` is the same command. Options in brackets also "
        "read that variable.",
    )
    p.add_argument("study", help=f"one of: {', '.join(STUDIES)}, or all")
    add_fields(p, ExperimentSettings(), "study settings", env_prefix="VAE_EXPERIMENT_")
    return p


def parse_settings(argv: Sequence[str]) -> tuple[str, ExperimentSettings]:
    """The study named in `argv` and its settings; a bad flag or variable exits 2 with one line."""
    p = parser()
    args = p.parse_args(list(argv))
    return args.study, settings_from_args(args, {d for d in vars(args) if p.source(d) != "default"})


def settings_from_args(args: argparse.Namespace, given: set[str]) -> ExperimentSettings:
    """Defaults, then quick mode's smaller sizes when asked, then what flags and variables gave."""
    settings = ExperimentSettings()
    settings = settings.quick_mode() if args.quick else settings
    for f in fields(ExperimentSettings):
        if f.name in given:
            setattr(settings, f.name, getattr(args, f.name))
    return settings


def main(argv: Sequence[str] | None = None, prog: str = "python -m training.experiments") -> int:
    """Entry point for `python -m training.experiments` and `vae-train experiment`."""
    p = parser(prog)
    args = p.parse_args(argv)
    names = list(STUDIES) if args.study == "all" else [args.study]
    if any(name not in STUDIES for name in names):
        p.fail(f"unknown study {args.study!r}; choose one of: {', '.join(STUDIES)}, all")
    settings = settings_from_args(args, {d for d in vars(args) if p.source(d) != "default"})
    given = list(sys.argv[1:] if argv is None else argv)
    rest = shlex.join(given[1:])  # the flags, recorded with the figures
    for name in names:
        command = f"python -m training.experiments {name} {rest}".strip()
        run_study(name, settings, command)
    return 0
