"""`vae-train`: train a model from flags and/or a YAML config; every flag also reads VAE_<FIELD>."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

from training.models import ModelConfig
from training.train import NonFiniteLoss, TrainConfig, train


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_fields(parser: argparse.ArgumentParser, config: object, prefix: str) -> None:
    """One flag per dataclass field, typed from its default; defaults stay None so we see what was set."""
    group = parser.add_argument_group(prefix or "training")
    for f in dataclasses.fields(config):  # type: ignore[arg-type]
        default = getattr(config, f.name)
        if dataclasses.is_dataclass(default):
            continue
        env = "VAE_" + f.name.upper()
        help_text = f"default {default!r} [{env}]"
        if isinstance(default, tuple):
            group.add_argument(_flag(f.name), type=int, nargs="+", default=None, help=help_text)
        elif isinstance(default, bool):  # `--resume` alone means true; `--amp false` also works
            group.add_argument(
                _flag(f.name), type=_boolean, nargs="?", const=True, default=None, help=help_text
            )
        else:
            group.add_argument(_flag(f.name), type=type(default), default=None, help=help_text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vae-train",
        description="Train an autoencoder or VAE and write checkpoints, logs and figures to a run "
        "directory. Precedence: flags, then VAE_* variables, then --config, then defaults. "
        "Other commands: `vae-train experiment <study>`, `vae-train classifier`, "
        "`vae-train prior <run-dir>`, `vae-train quality <run-dir>` (each has --help).",
    )
    parser.add_argument("--config", type=Path, default=None, help="YAML file of fields to set")
    _add_fields(parser, TrainConfig(), "")
    _add_fields(parser, ModelConfig(), "model")
    return parser


def _boolean(value: str) -> bool:
    lowered = value.lower()
    if lowered not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        raise argparse.ArgumentTypeError(f"{value!r} is not a boolean; use true or false")
    return lowered in ("1", "true", "yes", "on")


def _coerce(value: Any, default: Any, name: str) -> Any:
    """A YAML, environment or flag value as the type of the field's default, or a clear error."""
    try:
        if isinstance(default, tuple):
            if isinstance(value, str):
                value = value.replace(",", " ").split()
            return tuple(int(v) for v in value)
        if isinstance(default, bool):
            return value if isinstance(value, bool) else _boolean(str(value))
        if isinstance(default, float) and isinstance(value, int):
            return float(value)
        if isinstance(value, type(default)):
            return value
        return type(default)(value)
    except (TypeError, ValueError, argparse.ArgumentTypeError) as exc:
        raise SystemExit(
            f"vae-train: field {name!r} expects {type(default).__name__} like {default!r}, got "
            f"{value!r} ({exc})"
        ) from exc


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Merge defaults < YAML < environment < flags into a TrainConfig."""
    layers: dict[str, Any] = {}
    model_layers: dict[str, Any] = {}
    if args.config is not None:
        import yaml

        if not args.config.is_file():
            raise SystemExit(f"vae-train: config file {args.config} does not exist")
        loaded = yaml.safe_load(args.config.read_text()) or {}
        if not isinstance(loaded, dict):
            raise SystemExit(
                f"vae-train: {args.config} must hold a mapping of field names to values"
            )
        model_layers.update(loaded.pop("model", {}) or {})
        layers.update(loaded)
    values = vars(args)
    for target, template in ((layers, TrainConfig()), (model_layers, ModelConfig())):
        for f in dataclasses.fields(template):
            default = getattr(template, f.name)
            if dataclasses.is_dataclass(default):
                continue
            if f.name in target:
                target[f.name] = _coerce(target[f.name], default, f.name)
            env = os.environ.get("VAE_" + f.name.upper())
            if env is not None:
                target[f.name] = _coerce(env, default, f.name)
            if values.get(f.name) is not None:
                target[f.name] = values[f.name]
    known_train = {f.name for f in dataclasses.fields(TrainConfig)}
    known_model = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = (set(layers) - known_train) | (set(model_layers) - known_model)
    if unknown:
        raise SystemExit(
            f"vae-train: unknown config fields {sorted(unknown)}; training fields are "
            f"{sorted(known_train - {'model'})}, model fields (under 'model:') are {sorted(known_model)}"
        )
    model = ModelConfig.from_dict({**ModelConfig().to_dict(), **model_layers})
    return TrainConfig(**layers, model=model)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["experiment"]:  # `vae-train experiment <study> ...`: the studies of reports/
        from training.experiments.runner import main as run_experiment

        return run_experiment(argv[1:])
    from training.subcommands import SUBCOMMANDS

    if argv[:1] and argv[0] in SUBCOMMANDS:  # the quality classifier, the mixture prior, the score
        from training.subcommands import main as run_subcommand

        return run_subcommand(argv)
    args = build_parser().parse_args(argv)
    config = config_from_args(args)
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


if __name__ == "__main__":
    sys.exit(main())
