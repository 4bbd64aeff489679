"""Command-line options that also read VAE_* variables, checked when parsed: one line and exit 2.

`StrictParser` is an argparse parser whose typed options keep the raw text of a flag or of its
environment variable and convert it after parsing, with a converter that says what is allowed. A
mistake anywhere (a flag, a variable, a combination) ends the program with status 2 and one line on
stderr naming the flag, the variable when the value came from one, the value and what is allowed:

    vae-serve: VAE_PORT='abc' (for --port): expected an integer from 0 to 65535

Variables are read when the parser parses, never when it is built, so a bad variable cannot raise
a traceback at import or `--help` time; a variable that is set but empty counts as unset. Booleans
accept true/false, 1/0, yes/no and on/off in any case; anything else (`ture`) is refused.
Used by all five commands: vae-serve, vae-client, vae-bench, vae-export and vae-train (with its
subcommands). It imports nothing outside the standard library at module level, which is why
training/ may import it (and nothing else of server/); `providers` asks onnxruntime, when installed,
only when it converts a value.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

# A converter takes the text of a flag or variable and returns its value, or raises ValueError
# whose message says what is allowed ("expected an integer from 0 to 65535").
Convert = Callable[[str], Any]
# A check looks at the converted namespace and returns an error message, or None when all is well.
Check = Callable[[argparse.Namespace], str | None]

TRUE_WORDS = ("true", "1", "yes", "on")
FALSE_WORDS = ("false", "0", "no", "off")


class _Unset:
    """argparse's default for typed options: 'not on the command line', distinct from any value."""

    def __repr__(self) -> str:
        return "<unset>"


UNSET: Any = _Unset()


# ---------------------------------------------------------------------------------- converters


def integer(minimum: int | None = None, maximum: int | None = None) -> Convert:
    """Whole numbers in [minimum, maximum] (either bound may be open)."""
    if minimum is not None and maximum is not None:
        allowed = f"an integer from {minimum} to {maximum}"
    elif minimum is not None:
        allowed = f"an integer of at least {minimum}"
    elif maximum is not None:
        allowed = f"an integer of at most {maximum}"
    else:
        allowed = "an integer"

    def convert(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise ValueError(f"expected {allowed}") from None
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            raise ValueError(f"expected {allowed}")
        return value

    return convert


def number(minimum: float | None = None, *, above: float | None = None) -> Convert:
    """Finite decimal numbers, at least `minimum` or strictly above `above`."""
    if minimum is not None:
        allowed = f"a number of at least {minimum:g}"
    elif above is not None:
        allowed = f"a number greater than {above:g}"
    else:
        allowed = "a number"

    def convert(text: str) -> float:
        try:
            value = float(text.strip())
        except ValueError:
            raise ValueError(f"expected {allowed}") from None
        if not math.isfinite(value):
            raise ValueError(f"expected {allowed} (finite)")
        if (minimum is not None and value < minimum) or (above is not None and value <= above):
            raise ValueError(f"expected {allowed}")
        return value

    return convert


def choice(*allowed: str) -> Convert:
    """One of `allowed`, matched without regard to case; returns the canonical spelling."""
    by_lower = {a.lower(): a for a in allowed}

    def convert(text: str) -> str:
        found = by_lower.get(text.strip().lower())
        if found is None:
            raise ValueError(f"expected one of {', '.join(allowed)}")
        return found

    return convert


def boolean(text: str) -> bool:
    """true/false, 1/0, yes/no, on/off (any case); anything else is a mistake, never false."""
    lowered = text.strip().lower()
    if lowered in TRUE_WORDS:
        return True
    if lowered in FALSE_WORDS:
        return False
    raise ValueError("expected a boolean: true, false, 1, 0, yes, no, on or off")


def integers(minimum: int | None = None) -> Convert:
    """One or more whole numbers (each at least `minimum`), separated by spaces or commas."""
    allowed = "one or more integers" + (f" of at least {minimum}" if minimum is not None else "")

    def convert(text: str) -> tuple[int, ...]:
        try:
            values = tuple(int(item) for item in text.replace(",", " ").split())
        except ValueError:
            raise ValueError(f"expected {allowed}") from None
        if not values or (minimum is not None and min(values) < minimum):
            raise ValueError(f"expected {allowed}")
        return values

    return convert


def like(convert: Convert, example: str) -> Convert:
    """`convert`, whose refusals end with an example of an accepted value: `(like 10)`."""

    def wrapped(text: str) -> Any:
        try:
            return convert(text)
        except ValueError as exc:
            raise ValueError(f"{exc} (like {example})") from None

    return wrapped


def text(value: str) -> str:
    """Any text, kept as given."""
    return value


def nonempty(value: str) -> str:
    """Any text but the empty string."""
    if not value.strip():
        raise ValueError("expected a non-empty value")
    return value


def path(value: str) -> Path:
    """A filesystem path (not checked for existence here: the program says what is missing)."""
    if not value.strip():
        raise ValueError("expected a path")
    return Path(value)


def optional(convert: Convert) -> Convert:
    """`convert`, except that an empty value means None."""

    def wrapped(value: str) -> Any:
        return None if not value.strip() else convert(value)

    return wrapped


def _known_providers() -> frozenset[str] | None:
    """Every execution provider name onnxruntime knows (in this build or not); None without it."""
    try:
        import onnxruntime
    except ImportError:
        return None
    return frozenset(onnxruntime.get_all_providers())


def providers(value: str) -> tuple[str, ...]:
    """Comma-separated onnxruntime execution providers, most preferred first."""
    names = [p.strip() for p in value.split(",") if p.strip()]
    if not names:
        raise ValueError(
            "expected comma-separated onnxruntime execution providers, e.g. "
            "CUDAExecutionProvider,CPUExecutionProvider"
        )
    known = _known_providers()
    if known is None:  # onnxruntime missing: vae-serve says so itself; check the form only
        known = frozenset(n for n in names if n.endswith("ExecutionProvider"))
    by_lower = {k.lower(): k for k in known}
    chosen = []
    for name in names:
        if name.lower() not in by_lower:
            raise ValueError(
                f"unknown provider {name!r}; onnxruntime knows {', '.join(sorted(known))}"
            )
        chosen.append(by_lower[name.lower()])
    return tuple(chosen)


# ------------------------------------------------------------------------------------- parser


@dataclass(frozen=True)
class _Typed:
    flag: str
    env: str | None
    convert: Convert | None  # None: a switch, whose flags store True/False themselves
    default: Any
    help: str = ""  # as declared, before --help adds the default and the variable
    shown_default: str = ""  # the default as --help shows it


@dataclass(frozen=True)
class OptionDoc:
    """What --help says of one option, in parts: for the generated flag reference (docs/)."""

    env: str | None
    default: str  # as --help shows it: "50051", "on", "none", "50052 with --tls-cert, off without"
    help: str


class StrictParser(argparse.ArgumentParser):
    """argparse with typed options read from flags or VAE_* variables, and one-line errors."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._typed: dict[str, _Typed] = {}
        self._checks: list[Check] = []
        self._given: dict[str, tuple[str, str]] = {}  # dest -> (where, raw text), for messages

    def option(
        self,
        flag: str,
        convert: Convert,
        default: Any,
        help: str,
        *,
        env: str | None = None,
        dest: str | None = None,
        metavar: str | None = None,
        shown_default: str | None = None,
        aliases: Sequence[str] = (),
        group: Any = None,
        nargs: str | None = None,
    ) -> None:
        """A flag taking one value, converted by `convert`; `env` is read when the flag is absent.

        `nargs="+"` (or "*") takes several words, which reach `convert` joined by spaces, as the
        variable's text does (`--hidden-dims 32 64` and `VAE_HIDDEN_DIMS='32 64'` alike).
        """
        dest = dest or flag.lstrip("-").replace("-", "_")
        shown = shown_default if shown_default is not None else _show(default)
        (group or self).add_argument(
            flag,
            *aliases,
            dest=dest,
            default=UNSET,
            nargs=nargs,
            metavar=metavar or flag.lstrip("-").replace("-", "_").upper(),
            help=_help(help, shown, env),
        )
        self._typed[dest] = _Typed(flag, env, convert, default, help, shown)

    def switch(
        self,
        flag: str,
        default: bool,
        help: str,
        *,
        env: str | None = None,
        dest: str | None = None,
        negatable: bool = False,
        takes_value: bool = False,
        group: Any = None,
    ) -> None:
        """An on/off flag (`--x`, and `--no-x` when negatable); `env` takes a boolean word.

        With `takes_value` the flag alone means on and may also take a boolean word (`--amp false`),
        as vae-train's flags always did.
        """
        dest = dest or flag.lstrip("-").replace("-", "_")
        container = group or self
        shown = "on" if default else "off"
        if takes_value:
            container.add_argument(
                flag, dest=dest, nargs="?", const="true", default=UNSET, metavar="BOOL",
                help=_help(help, shown, env),
            )  # fmt: skip
            self._typed[dest] = _Typed(flag, env, boolean, default, help, shown)
            return
        container.add_argument(
            flag, dest=dest, action="store_const", const=True, default=UNSET,
            help=_help(help, shown, env),
        )  # fmt: skip
        if negatable:
            container.add_argument(
                "--no-" + flag.removeprefix("--"),
                dest=dest,
                action="store_const",
                const=False,
                default=UNSET,
                help=f"turn {flag} off" + (f" [{env}]" if env else ""),
            )
        self._typed[dest] = _Typed(flag, env, None, default, help, shown)

    def check(self, check: Check) -> None:
        """Run `check` on the converted values; a message it returns is the error."""
        self._checks.append(check)

    def documentation(self, dest: str) -> OptionDoc | None:
        """The variable, shown default and help of the typed option `dest`; None for plain argparse
        arguments (positionals, --help). Read by scripts/flag_reference.py."""
        typed = self._typed.get(dest)
        if typed is None:
            return None
        return OptionDoc(typed.env, typed.shown_default, typed.help)

    def source(self, dest: str) -> str:
        """Where the last parse took `dest` from: "flag", "env" or "default"."""
        return self._given.get(dest, ("default", ""))[0]

    def describe(self, dest: str) -> str:
        """How the user gave `dest`: `--port 50052`, `VAE_PORT='50052' (for --port)`, or `--port`."""
        typed = self._typed[dest]
        where, raw = self._given.get(dest, ("default", ""))
        if where == "flag":
            return f"{typed.flag} {raw}"
        if where == "env":
            return f"{typed.env}={raw!r} (for {typed.flag})"
        return f"{typed.flag} (default)"

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        self._given = {}
        for dest, typed in self._typed.items():
            setattr(parsed, dest, self._resolve(dest, typed, getattr(parsed, dest, UNSET)))
        for check in self._checks:
            problem = check(parsed)
            if problem:
                self.fail(problem)
        return parsed, extras

    def _resolve(self, dest: str, typed: _Typed, given: Any) -> Any:
        if given is not UNSET:
            if typed.convert is None:  # a switch's flag: True or False already
                self._given[dest] = ("flag", "")
                return given
            if isinstance(given, list):  # nargs: the words as one text, like a variable's
                given = " ".join(given)
            self._given[dest] = ("flag", given)
            return self._convert(typed, given, f"{typed.flag} {given!r}")
        raw = os.environ.get(typed.env, "") if typed.env else ""
        if not raw.strip():
            return typed.default
        self._given[dest] = ("env", raw)
        convert = typed.convert or boolean
        return self._convert_with(convert, raw, f"{typed.env}={raw!r} (for {typed.flag})")

    def _convert(self, typed: _Typed, raw: str, where: str) -> Any:
        assert typed.convert is not None
        return self._convert_with(typed.convert, raw, where)

    def _convert_with(self, convert: Convert, raw: str, where: str) -> Any:
        try:
            return convert(raw)
        except ValueError as exc:
            self.fail(f"{where}: {exc}")

    def fail(self, message: str) -> NoReturn:
        """End the program: one line on stderr, status 2."""
        self.exit(2, f"{self.prog}: {message}\n")

    def error(self, message: str) -> NoReturn:
        """argparse's own mistakes (unknown flag, missing value) on one line, without the usage."""
        self.fail(f"{message.removeprefix('argument ')} (see {self.prog} --help)")


def _show(default: Any) -> str:
    if default is None or default == "" or default == ():
        return "none"
    if isinstance(default, tuple):
        return ",".join(str(d) for d in default)
    return str(default)


def _help(help: str, shown: str, env: str | None) -> str:
    # argparse %-formats help strings: a literal % must be doubled.
    return f"{help} (default: {shown})".replace("%", "%%") + (f" [{env}]" if env else "")
