"""`vae-train`: train a model from flags and/or a YAML config; every flag also reads VAE_<FIELD>.

A mistake in a flag, a variable or the YAML file exits 2 with one line naming where the value came
from, the value and what is allowed. Without the `train` extra (the torch-free install) vae-train
and vae-export say which extra to install instead of raising ModuleNotFoundError.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

# Top-level modules of the `train` extra (pyproject.toml): vae-train and vae-export need them.
TRAIN_EXTRA_MODULES = frozenset(
    {"torch", "torchvision", "onnx", "onnxscript", "onnxconverter_common", "onnxslim", "yaml"}
    | {"matplotlib", "tqdm", "tensorboard"}
)
TRUE_WORDS = ("true", "1", "yes", "on")  # the same words as the server's (server/options.py)
FALSE_WORDS = ("false", "0", "no", "off")

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


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """argparse's mistakes on one line, without the usage."""
        self.exit(2, f"{self.prog}: {message.removeprefix('argument ')} (see {self.prog} --help)\n")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _env(name: str) -> str:
    return "VAE_" + name.upper()


def _add_fields(parser: argparse.ArgumentParser, config: object, prefix: str) -> None:
    """One flag per dataclass field; values stay raw text (None when absent) until
    config_from_args converts them, so flags, variables and YAML share one set of messages."""
    group = parser.add_argument_group(prefix or "training")
    for f in dataclasses.fields(config):  # type: ignore[arg-type]
        default = getattr(config, f.name)
        if dataclasses.is_dataclass(default):
            continue
        help_text = f"default {default!r} [{_env(f.name)}]"
        if isinstance(default, tuple):
            group.add_argument(_flag(f.name), nargs="+", default=None, help=help_text)
        elif isinstance(default, bool):  # `--resume` alone means true; `--amp false` also works
            group.add_argument(
                _flag(f.name), nargs="?", const=True, default=None, metavar="BOOL", help=help_text
            )
        else:
            group.add_argument(_flag(f.name), default=None, help=help_text)


def build_parser() -> argparse.ArgumentParser:
    from training.models import ModelConfig
    from training.train import TrainConfig

    parser = _Parser(
        prog="vae-train",
        description="Train an autoencoder or VAE and write checkpoints, logs and figures to a run "
        "directory. Precedence: flags, then VAE_* variables, then --config, then defaults. "
        "Booleans take true/false, 1/0, yes/no or on/off. "
        "Other commands: `vae-train experiment <study>`, `vae-train classifier`, "
        "`vae-train prior <run-dir>`, `vae-train quality <run-dir>` (each has --help).",
    )
    parser.add_argument("--config", type=Path, default=None, help="YAML file of fields to set")
    _add_fields(parser, TrainConfig(), "")
    _add_fields(parser, ModelConfig(), "model")
    return parser


def _boolean(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered not in TRUE_WORDS + FALSE_WORDS:
        raise ValueError("expected a boolean: true, false, 1, 0, yes, no, on or off")
    return lowered in TRUE_WORDS


def _convert(value: Any, default: Any) -> Any:
    """`value` (text, or a YAML scalar or list) as the type of the field's default."""
    if isinstance(default, tuple):
        items = value.replace(",", " ").split() if isinstance(value, str) else value
        try:
            if not isinstance(items, list | tuple) or not items:
                raise ValueError
            return tuple(_convert(item, 0) for item in items)
        except ValueError:
            raise ValueError("expected one or more integers") from None
    if isinstance(default, bool):
        return value if isinstance(value, bool) else _boolean(str(value))
    if isinstance(default, int):
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError("expected an integer")
        try:
            return int(value.strip() if isinstance(value, str) else value)
        except (TypeError, ValueError):
            raise ValueError("expected an integer") from None
    if isinstance(default, float):
        try:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        except (TypeError, ValueError):
            raise ValueError("expected a number") from None
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise ValueError("expected text")
    return str(value)


def _coerce(value: Any, default: Any, where: str) -> Any:
    try:
        return _convert(value, default)
    except ValueError as exc:
        if isinstance(default, bool):
            raise ConfigError(f"{where}: {exc}") from None
        example = " ".join(map(str, default)) if isinstance(default, tuple) else repr(default)
        raise ConfigError(f"{where}: {exc} (like {example})") from None


def config_from_args(args: argparse.Namespace) -> Any:
    """Merge defaults < YAML < environment < flags into a TrainConfig; ConfigError on a mistake."""
    from training.models import ModelConfig
    from training.train import TrainConfig

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
    values = vars(args)
    for target, template in ((layers, TrainConfig()), (model_layers, ModelConfig())):
        for f in dataclasses.fields(template):
            default = getattr(template, f.name)
            if dataclasses.is_dataclass(default):
                continue
            if f.name in target:
                where = f"{args.config}: field {f.name!r} = {target[f.name]!r}"
                target[f.name] = _coerce(target[f.name], default, where)
            env = os.environ.get(_env(f.name), "")
            if env.strip():  # set but empty counts as unset
                where = f"{_env(f.name)}={env!r} (for {_flag(f.name)})"
                target[f.name] = _coerce(env, default, where)
            given = values.get(f.name)
            if given is not None:
                shown = " ".join(given) if isinstance(given, list) else given
                where = _flag(f.name) if given is True else f"{_flag(f.name)} {shown!r}"
                target[f.name] = _coerce(given, default, where)
    known_train = {f.name for f in dataclasses.fields(TrainConfig)}
    known_model = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = (set(layers) - known_train) | (set(model_layers) - known_model)
    if unknown:
        raise ConfigError(
            f"unknown config fields {sorted(unknown)}; training fields are "
            f"{sorted(known_train - {'model'})}, model fields (under 'model:') are {sorted(known_model)}"
        )
    model = ModelConfig.from_dict({**ModelConfig().to_dict(), **model_layers})
    return TrainConfig(**layers, model=model)


def _train(argv: list[str]) -> int:
    from training.train import NonFiniteLoss, train

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
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
    print(json.dumps(summary, indent=2))
    return 0


def _experiment(argv: list[str]) -> int:
    from training.experiments.runner import main as run_experiment

    return run_experiment(argv)


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
