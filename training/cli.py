"""`vae-train`: train a model from flags and/or a YAML config; every flag also reads VAE_<FIELD>.

A mistake in a flag, a variable or the YAML file exits 2 with one line naming where the value came
from, the value and what is allowed. Without the `train` extra (the torch-free install) vae-train
and vae-export say which extra to install instead of raising ModuleNotFoundError.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from server import options as opt  # stdlib-only: the one module of server/ training may import
from server.options import StrictParser
from training.cli_options import add_fields, converter

# Top-level modules of the `train` extra (pyproject.toml): vae-train and vae-export need them.
TRAIN_EXTRA_MODULES = frozenset(
    {"torch", "torchvision", "onnx", "onnxscript", "onnxconverter_common", "onnxslim", "yaml"}
    | {"matplotlib", "tqdm", "tensorboard"}
)

T = TypeVar("T")


class ConfigError(ValueError):
    """A value in a flag, a VAE_* variable or the YAML config that the field cannot take."""


def missing_extra_message(prog: str, exc: ModuleNotFoundError) -> str | None:
    """The one line to print when `exc` is a module of an extra this install lacks, else None."""
    root = (exc.name or "").split(".")[0]
    if root in TRAIN_EXTRA_MODULES:
        return (
            f"{prog}: {root} is not installed (this is the torch-free install, for serving); "
            f"{prog} needs the train extra: pip install 'vae-service[train,cpu]' "
            "(or from a checkout: uv sync --extra train --extra cpu)"
        )
    if root == "onnxruntime":
        return (
            f"{prog}: onnxruntime is not installed; the ONNX parity check needs it: "
            "pip install 'vae-service[train,cpu]' (or [train,gpu])"
        )
    return None


def import_or_explain(prog: str, load: Callable[[], T]) -> T:
    """`load()`, or, when it needs a module of an extra that is not installed, exit 2 saying which."""
    try:
        return load()
    except ModuleNotFoundError as exc:
        message = missing_extra_message(prog, exc)
        if message is None:
            raise
        print(message, file=sys.stderr)
        raise SystemExit(2) from None


def build_parser() -> StrictParser:
    from training.config import TrainConfig
    from training.models import ModelConfig

    parser = StrictParser(
        prog="vae-train",
        description="Train an autoencoder or VAE and write checkpoints, logs and figures to a run "
        "directory. Precedence: flags, then VAE_* variables, then --config, then defaults. "
        "Booleans take true/false, 1/0, yes/no or on/off. "
        "Other commands: `vae-train experiment <study>`, `vae-train classifier`, "
        "`vae-train prior <run-dir>`, `vae-train quality <run-dir>` (each has --help).",
    )
    parser.option(
        "--config",
        opt.optional(opt.path),
        None,
        "YAML file of fields to set (model fields under `model:`); flags and variables win",
        env="VAE_CONFIG",
    )
    add_fields(parser, TrainConfig(), "training")
    add_fields(parser, ModelConfig(), "model")
    return parser


def _yaml_text(value: Any, several: bool) -> str:
    """A YAML value as the text a flag would have given, for the same converter."""
    if several and isinstance(value, list):
        if not all(isinstance(item, int | str) and not isinstance(item, bool) for item in value):
            raise ValueError
        return " ".join(map(str, value))
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value)
    raise ValueError


def _from_yaml(value: Any, default: Any, where: str) -> Any:
    """A YAML value converted as its flag's text would be; ConfigError naming the field."""
    convert = opt.boolean if isinstance(default, bool) else converter(default)
    try:
        return convert(_yaml_text(value, isinstance(default, tuple)))
    except ValueError as exc:
        allowed = str(exc) or (
            "expected one or more integers" if isinstance(default, tuple) else "expected one value"
        )
        raise ConfigError(f"{where}: {allowed}") from None


def config_from_args(args: argparse.Namespace, given: set[str]) -> Any:
    """Merge defaults < YAML < environment < flags into a TrainConfig; ConfigError on a mistake in
    the YAML. `given`: the fields the parser took from a flag or a variable (parse_config)."""
    from training.config import TrainConfig
    from training.models import ModelConfig

    layers: dict[str, Any] = {}
    model_layers: dict[str, Any] = {}
    if args.config is not None:
        import yaml

        if not args.config.is_file():
            raise ConfigError(f"config file {args.config} does not exist")
        try:
            loaded = yaml.safe_load(args.config.read_text()) or {}
        except yaml.YAMLError as exc:
            problem = " ".join(str(exc).split())  # one line
            raise ConfigError(f"{args.config} is not valid YAML: {problem}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{args.config} must hold a mapping of field names to values")
        model_layers.update(loaded.pop("model", {}) or {})
        layers.update(loaded)
    known_train = {f.name for f in dataclasses.fields(TrainConfig)}
    known_model = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = (set(layers) - known_train) | (set(model_layers) - known_model)
    if unknown:
        raise ConfigError(
            f"unknown config fields {sorted(unknown)}; training fields are "
            f"{sorted(known_train - {'model'})}, model fields (under 'model:') are {sorted(known_model)}"
        )
    values = vars(args)
    for target, template in ((layers, TrainConfig()), (model_layers, ModelConfig())):
        for f in dataclasses.fields(template):
            default = getattr(template, f.name)
            if dataclasses.is_dataclass(default):
                continue
            from_command_line = f.name in given if given is not None else values[f.name] != default
            if from_command_line:
                target[f.name] = values[f.name]
            elif f.name in target:
                where = f"{args.config}: field {f.name!r} = {target[f.name]!r}"
                target[f.name] = _from_yaml(target[f.name], default, where)
    model = ModelConfig.from_dict({**ModelConfig().to_dict(), **model_layers})
    return TrainConfig(**layers, model=model)


def parse_config(argv: list[str]) -> Any:
    """vae-train's flags, VAE_* variables and --config file as a TrainConfig. A bad flag or
    variable exits 2 with one line (StrictParser); a bad YAML field raises ConfigError."""
    parser = build_parser()
    args = parser.parse_args(argv)
    given = {dest for dest in vars(args) if parser.source(dest) != "default"}
    return config_from_args(args, given)


def _train(argv: list[str]) -> int:
    from training.train import NonFiniteLoss, train

    try:
        config = parse_config(argv)
    except ConfigError as exc:
        print(f"vae-train: {exc}", file=sys.stderr)
        return 2
    try:
        summary = train(config)
    except NonFiniteLoss as exc:
        print(f"vae-train: {exc}", file=sys.stderr)
        return 3
    except (FileNotFoundError, ValueError) as exc:
        print(f"vae-train: {exc}", file=sys.stderr)
        return 2
    print(summary_lines(summary, Path(config.run_dir)))
    return 0


def summary_lines(summary: dict[str, Any], run_dir: Path) -> str:
    """The few lines vae-train ends with; the whole summary is in <run_dir>/metrics.json."""
    epochs, steps = summary.get("epochs", 0), summary.get("steps", 0)
    lines = [f"done: {epochs} epoch{'s' * (epochs != 1)}, {steps} optimiser steps"]
    if "test_elbo" in summary:
        lines.append(
            f"test ELBO {summary['test_elbo']:.2f} nats per image (reconstruction "
            f"{summary['test_reconstruction']:.2f}, KL {summary['test_kl']:.2f})"
            + (
                f"; IWAE -log p(x) <= {summary['test_iwae_nll']:.2f} (k={summary['iwae_samples']})"
                if "test_iwae_nll" in summary
                else ""
            )
        )
    lines.append(
        f"checkpoints: {run_dir / 'best.pt'} (best validation ELBO), {run_dir / 'last.pt'}"
    )
    lines.append(f"every figure: {run_dir / 'metrics.json'}; per epoch: {run_dir / 'log.jsonl'}")
    return "\n".join(lines)


def _experiment(argv: list[str]) -> int:
    from training.experiments.runner import main as run_experiment

    return run_experiment(argv, prog="vae-train experiment")


def _subcommand(argv: list[str]) -> int:
    from training.subcommands import main as run_subcommand

    return run_subcommand(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["experiment"]:  # `vae-train experiment <study> ...`: the studies of reports/
        return import_or_explain("vae-train", lambda: _experiment(argv[1:]))
    from training.subcommands import SUBCOMMANDS  # torch-free: the commands' names and parsers

    if argv[:1] and argv[0] in SUBCOMMANDS:  # the quality classifier, the mixture prior, the score
        return import_or_explain("vae-train", lambda: _subcommand(argv))
    return import_or_explain("vae-train", lambda: _train(argv))


if __name__ == "__main__":
    sys.exit(main())
