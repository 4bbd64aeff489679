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
        elif isinstance(default, bool):
            group.add_argument(
                _flag(f.name),
                type=lambda s: s.lower() in ("1", "true", "yes"),
                default=None,
                help=help_text,
            )
        else:
            group.add_argument(_flag(f.name), type=type(default), default=None, help=help_text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vae-train",
        description="Train an autoencoder or VAE and write checkpoints, logs and figures to a run "
        "directory. Precedence: flags, then VAE_* variables, then --config, then defaults.",
    )
    parser.add_argument("--config", type=Path, default=None, help="YAML file of fields to set")
    _add_fields(parser, TrainConfig(), "")
    _add_fields(parser, ModelConfig(), "model")
    return parser


def _coerce(value: str, default: Any) -> Any:
    if isinstance(default, tuple):
        return tuple(int(v) for v in value.replace(",", " ").split())
    if isinstance(default, bool):
        return value.lower() in ("1", "true", "yes")
    return type(default)(value)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Merge defaults < YAML < environment < flags into a TrainConfig."""
    layers: dict[str, Any] = {}
    model_layers: dict[str, Any] = {}
    if args.config is not None:
        import yaml

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
            env = os.environ.get("VAE_" + f.name.upper())
            if env is not None:
                target[f.name] = _coerce(env, default)
            if values.get(f.name) is not None:
                target[f.name] = values[f.name]
    known_train = {f.name for f in dataclasses.fields(TrainConfig)}
    known_model = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = (set(layers) - known_train) | (set(model_layers) - known_model)
    if unknown:
        raise SystemExit(f"vae-train: unknown config fields {sorted(unknown)}")
    model = ModelConfig.from_dict({**ModelConfig().to_dict(), **model_layers})
    return TrainConfig(**layers, model=model)


def main(argv: list[str] | None = None) -> int:
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
