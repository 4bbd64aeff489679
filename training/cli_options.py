"""Dataclass fields as StrictParser options: one flag `--<field>` and one variable `VAE_<FIELD>` per
field, typed from the field's default, with the field's comment in the code as its help."""

from __future__ import annotations

import dataclasses
import inspect
import re
from typing import Any

from server import options as opt  # stdlib-only: the one module of server/ training may import
from server.options import StrictParser


def flag_of(name: str) -> str:
    """The flag of a field: learning_rate -> --learning-rate."""
    return "--" + name.replace("_", "-")


def field_comments(cls: type) -> dict[str, str]:
    """Each dataclass field's comment in `cls`'s source (the lines above it and its trailing one),
    so `--help` says what the code's comments say; {} where the source is not installed."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    comments: dict[str, str] = {}
    above: list[str] = []
    for line in source.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            above.append(stripped.lstrip("#").strip())
            continue
        declared = re.match(r"(\w+): [^=]+=[^#]*(?:#\s*(.*))?$", stripped)
        if declared:
            comments[declared[1]] = " ".join([*above, declared[2] or ""]).strip()
        above = []
    return comments


def converter(default: Any) -> opt.Convert:
    """The StrictParser converter of a field, from the type of its default."""
    if isinstance(default, tuple):
        return opt.like(opt.integers(), " ".join(map(str, default)) or "1 2 5")
    if isinstance(default, int):
        return opt.like(opt.integer(), repr(default))
    if isinstance(default, float):
        return opt.like(opt.number(), repr(default))
    return opt.text


def add_fields(
    parser: StrictParser, config: object, title: str, env_prefix: str = "VAE_"
) -> list[str]:
    """One option per field of the dataclass `config` that is not itself a dataclass: flag
    `--<field>`, variable `<env_prefix><FIELD>`, default the field's value; returns their dests."""
    group = parser.add_argument_group(title)
    comments = field_comments(type(config))
    dests = []
    for f in dataclasses.fields(config):  # type: ignore[arg-type]
        default = getattr(config, f.name)
        if dataclasses.is_dataclass(default):
            continue
        flag, env = flag_of(f.name), env_prefix + f.name.upper()
        help_text = comments.get(f.name, "")
        if isinstance(default, bool):  # `--resume` alone means true; `--amp false` also works
            parser.switch(flag, default, help_text, env=env, takes_value=True, group=group)
        else:
            parser.option(
                flag, converter(default), default, help_text, env=env, group=group,
                nargs="+" if isinstance(default, tuple) else None,
            )  # fmt: skip
        dests.append(f.name)
    return dests
