"""Strict settings: every command refuses a bad flag or VAE_* variable with one line and status 2.

The line names the flag (and the variable, when the value came from one), the value and what is
allowed; nothing raises a traceback, not even a bad variable at `--help` time. The torch-free and
onnxruntime-free installs say which extra to install.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from client.bench import build_parser as bench_parser
from client.cli import build_parser as client_parser
from export.cli import build_parser as export_parser
from server.process.settings import (
    DEFAULT_HEALTH_PORT,
    Settings,
    build_parser,
    parse_settings,
    usable_cores,
)
from training.cli import build_parser as train_parser
from training.cli import parse_config
from training.experiments.runner import parser as experiment_parser
from training.subcommands import build_parser as subcommand_parser

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PARSERS = {
    "vae-serve": build_parser,
    "vae-client": client_parser,
    "vae-bench": bench_parser,
    "vae-export": export_parser,
    "vae-train": train_parser,
    "vae-train experiment": lambda: experiment_parser("vae-train experiment"),
    # classifier, prior and quality: argv starts with the command's name
    "vae-train COMMAND": subcommand_parser,
}


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    """No VAE_* variable of the machine running the tests leaks into these parsers."""
    for name in [n for n in os.environ if n.startswith("VAE_")]:
        monkeypatch.delenv(name)


def refusal(capsys, command: str, argv: list[str]) -> str:
    """The one line `command` prints when it refuses `argv`; fails unless it exits 2."""
    with pytest.raises(SystemExit) as exit_info:
        PARSERS[command]().parse_args(argv)
    err = capsys.readouterr().err
    assert (exit_info.value.code, err.count("\n")) == (2, 1), err
    return err.strip()


# (command, argv, environment, fragments the one line must hold)
REFUSED = [
    ("vae-serve", ["--log-level", "LOUD"], {}, ["--log-level 'LOUD'", "DEBUG, INFO, WARNING"]),
    ("vae-serve", ["--log-format", "xml"], {}, ["--log-format 'xml'", "text, json"]),
    ("vae-serve", [], {"VAE_PORT": "abc"}, ["VAE_PORT='abc' (for --port)", "0 to 65535"]),
    ("vae-serve", ["--port", "70000"], {}, ["--port '70000'", "0 to 65535"]),
    ("vae-serve", [], {"VAE_REQUIRE_GPU": "ture"}, ["VAE_REQUIRE_GPU='ture'", "true, false"]),
    ("vae-serve", [], {"VAE_BATCHING": "maybe"}, ["VAE_BATCHING='maybe'", "yes, no"]),
    ("vae-serve", [], {"VAE_TENSORRT": "enabled"}, ["VAE_TENSORRT='enabled'", "on or off"]),
    ("vae-serve", ["--max-concurrent-rpcs", "0"], {}, ["--max-concurrent-rpcs '0'", "at least 1"]),
    ("vae-serve", ["--processes", "-1"], {}, ["--processes '-1'", "at least 0"]),
    ("vae-serve", [], {"VAE_PROCESSES": "two"}, ["VAE_PROCESSES='two'", "integer"]),
    ("vae-serve", ["--grace-seconds", "-1"], {}, ["--grace-seconds '-1'", "at least 0"]),
    ("vae-serve", ["--grace-seconds", "nan"], {}, ["--grace-seconds 'nan'", "finite"]),
    ("vae-serve", ["--max-temperature", "0"], {}, ["--max-temperature '0'", "greater than 0"]),
    ("vae-serve", ["--max-batch-size", "0"], {}, ["--max-batch-size '0'", "at least 1"]),
    (
        "vae-serve",
        ["--cuda-arena-extend-strategy", "kDouble"],
        {},
        ["'kDouble'", "kNextPowerOfTwo, kSameAsRequested"],
    ),
    (
        "vae-serve",
        [],
        {"VAE_CUDNN_CONV_ALGO_SEARCH": "FAST"},
        ["VAE_CUDNN_CONV_ALGO_SEARCH='FAST'", "EXHAUSTIVE, HEURISTIC, DEFAULT"],
    ),
    ("vae-serve", ["--providers", "CUDA"], {}, ["unknown provider 'CUDA'", "CPUExecutionProvider"]),
    ("vae-serve", ["--providers", ","], {}, ["--providers ','", "comma-separated"]),
    (
        "vae-serve",
        [],
        {"VAE_MODEL_BATCHING": '{"m": {"max_batch_size": "16"}}'},
        ["VAE_MODEL_BATCHING=", "(for --model-batching)", "max_batch_size must be an integer"],
    ),
    (
        "vae-serve",
        ["--model-batching", '{"m": {"enabled": "no"}}'],
        {},
        ["model 'm'", "enabled must be true or false"],
    ),
    ("vae-serve", ["--model-batching", "{nope"], {}, ["not JSON", "with keys from"]),
    ("vae-serve", ["--model-batching", "[1]"], {}, ["top level must be an object"]),
    (
        "vae-serve",
        ["--model-batching", '{"m": {"max_queue_rows": 0}}'],
        {},
        ["model 'm'", "max_queue_rows must be at least 1"],
    ),
    ("vae-serve", ["--model-batching", "@/no/such/file.json"], {}, ["cannot read '/no/such"]),
    ("vae-serve", ["--health-port", "50051"], {}, ["--health-port 50051", "also --port"]),
    (
        "vae-serve",
        [],
        {"VAE_HEALTH_PORT": "9090"},
        ["VAE_HEALTH_PORT='9090' (for --health-port)", "also --metrics-port"],
    ),
    (
        "vae-serve",
        ["--tls-cert", "c.pem", "--port", str(DEFAULT_HEALTH_PORT)],
        {},
        [f"--health-port (default {DEFAULT_HEALTH_PORT} with --tls-cert)", "also --port"],
    ),
    ("vae-serve", ["--metrics-port", "50051"], {}, ["--metrics-port 50051 is also --port"]),
    ("vae-serve", ["--bogus"], {}, ["unrecognized arguments: --bogus", "vae-serve --help"]),
    ("vae-client", ["--timeout", "0", "info"], {}, ["--timeout '0'", "greater than 0"]),
    ("vae-client", ["sample", "--count", "0"], {}, ["vae-client sample: --count '0'"]),
    ("vae-client", ["sample", "--seed", "-1"], {}, ["--seed '-1'", "integer from 0"]),
    ("vae-client", ["sample", "--format", "gif"], {}, ["--format 'gif'", "png, npy"]),
    ("vae-client", ["sample", "--scale", "0"], {}, ["--scale '0'", "1 to 64"]),
    ("vae-client", ["interpolate", "--steps", "1"], {}, ["--steps '1'", "at least 2"]),
    ("vae-client", ["interpolate", "--method", "cubic"], {}, ["'cubic'", "linear, spherical"]),
    ("vae-client", [], {}, ["required: COMMAND"]),
    ("vae-bench", ["--concurrency", "0"], {}, ["--concurrency '0'", "at least 1"]),
    ("vae-bench", ["--duration", "0"], {}, ["--duration '0'", "greater than 0"]),
    ("vae-bench", ["--rpc", "generate"], {}, ["--rpc 'generate'", "sample, decode"]),
    ("vae-bench", ["--providers", "GPU"], {}, ["unknown provider 'GPU'"]),
    ("vae-export", ["runs", "--parity-batch", "0"], {}, ["--parity-batch '0'", "at least 1"]),
    (
        "vae-export",
        ["runs"],
        {"VAE_EXPORT_WHICH": "worst"},
        ["VAE_EXPORT_WHICH='worst' (for --which)", "best, last"],
    ),
    (
        "vae-export",
        ["runs"],
        {"VAE_EXPORT_PRECISION": "fp8"},
        ["VAE_EXPORT_PRECISION='fp8' (for --precision)", "fp32, fp16"],
    ),
    ("vae-export", ["runs", "--tolerance", "-1"], {}, ["--tolerance '-1'", "greater than 0"]),
    ("vae-train", ["--epochs", "x"], {}, ["--epochs 'x': expected an integer (like 10)"]),
    ("vae-train", [], {"VAE_EPOCHS": "abc"}, ["VAE_EPOCHS='abc' (for --epochs)", "an integer"]),
    ("vae-train", [], {"VAE_RESUME": "ture"}, ["VAE_RESUME='ture' (for --resume)", "a boolean"]),
    ("vae-train", ["--amp", "maybe"], {}, ["--amp 'maybe': expected a boolean: true, false, 1, 0"]),
    (
        "vae-train",
        ["--hidden-dims", "3", "x"],
        {},
        ["--hidden-dims '3 x': expected one or more integers"],
    ),
    ("vae-train", ["--learning-rate", "fast"], {}, ["--learning-rate 'fast': expected a number"]),
    ("vae-train", [], {"VAE_LOGVAR_MAX": "inf"}, ["VAE_LOGVAR_MAX='inf'", "finite"]),
    ("vae-train", ["--epochz", "3"], {}, ["unrecognized arguments: --epochz 3"]),
    (
        "vae-train COMMAND",
        ["prior", "runs/x"],
        {"VAE_PRIOR_COMPONENTS": "ten"},
        ["vae-train prior: VAE_PRIOR_COMPONENTS='ten' (for --components)", "integers"],
    ),
    ("vae-train COMMAND", ["prior", "r", "--components", "0"], {}, ["--components '0'", "least 1"]),
    (
        "vae-train COMMAND",
        ["prior", "r", "--which", "worst"],
        {},
        ["--which 'worst'", "best, last"],
    ),
    ("vae-train COMMAND", ["prior", "r", "--covariance", "tied"], {}, ["'tied'", "full, diag"]),
    ("vae-train COMMAND", ["prior"], {}, ["vae-train prior: the following arguments are required"]),
    ("vae-train COMMAND", ["classifier", "--epochs", "0"], {}, ["vae-train classifier: --epochs"]),
    ("vae-train COMMAND", ["classifier"], {"VAE_THREADS": "-1"}, ["VAE_THREADS='-1'", "least 0"]),
    ("vae-train COMMAND", ["quality", "r", "--samples", "lots"], {}, ["--samples 'lots'"]),
    ("vae-train COMMAND", ["quality", "r", "--temperatures", "0"], {}, ["positive numbers"]),
    ("vae-train COMMAND", ["prior", "r", "--kind", "flow"], {}, ["--kind 'flow'", "two-stage"]),
    ("vae-train COMMAND", ["prior", "r"], {"VAE_PRIOR_FIT": "modes"}, ["VAE_PRIOR_FIT='modes'"]),
    ("vae-train experiment", ["beta", "--epochs", "two"], {}, ["--epochs 'two'", "an integer"]),
    ("vae-train experiment", ["beta"], {"VAE_EXPERIMENT_QUICK": "y"}, ["'y'", "a boolean"]),
]


@pytest.mark.parametrize(
    ("command", "argv", "environment", "fragments"),
    REFUSED,
    ids=[
        f"{c} {' '.join(a)} {' '.join(f'{k}={v}' for k, v in e.items())}" for c, a, e, _ in REFUSED
    ],
)
def test_a_mistake_exits_2_with_one_line_naming_option_value_and_what_is_allowed(
    capsys, monkeypatch, command, argv, environment, fragments
):
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    line = refusal(capsys, command, argv)
    prog = command.replace(" COMMAND", "")
    assert line.startswith(prog) and [f for f in fragments if f not in line] == [], line


@pytest.mark.parametrize("command", sorted(PARSERS))
def test_a_bad_variable_does_not_break_building_the_parser_or_help(capsys, monkeypatch, command):
    for name in ("VAE_PORT", "VAE_REQUIRE_GPU", "VAE_CONCURRENCY", "VAE_EXPORT_WHICH"):
        monkeypatch.setenv(name, "not-a-value")
    for name in ("VAE_EPOCHS", "VAE_PRIOR_COMPONENTS", "VAE_THREADS", "VAE_EXPERIMENT_SEED"):
        monkeypatch.setenv(name, "not-a-value")
    monkeypatch.setenv("VAE_MODEL_BATCHING", "{broken")
    argv = ["prior", "--help"] if command == "vae-train COMMAND" else ["--help"]
    with pytest.raises(SystemExit) as exit_info:
        PARSERS[command]().parse_args(argv)
    assert (exit_info.value.code, "usage:" in capsys.readouterr().out) == (0, True)


# ------------------------------------------------------------------------------ what is accepted


@pytest.mark.parametrize(
    ("word", "value"),
    [(w, True) for w in ("true", "TRUE", "1", "yes", "Yes", "on", "ON")]
    + [(w, False) for w in ("false", "False", "0", "no", "NO", "off", "Off")],
)
def test_boolean_variables_take_true_false_1_0_yes_no_on_off_in_any_case(monkeypatch, word, value):
    monkeypatch.setenv("VAE_REQUIRE_GPU", word)
    assert parse_settings([]).require_gpu is value


def test_an_empty_variable_counts_as_unset(monkeypatch):
    monkeypatch.setenv("VAE_PORT", "")
    monkeypatch.setenv("VAE_BATCHING", " ")
    settings = parse_settings([])
    assert (settings.port, settings.batching.enabled) == (Settings().port, True)


def test_a_flag_overrides_its_variable(monkeypatch):
    monkeypatch.setenv("VAE_BATCHING", "true")
    monkeypatch.setenv("VAE_PORT", "6000")
    settings = parse_settings(["--no-batching", "--port", "7000"])
    assert (settings.batching.enabled, settings.port) == (False, 7000)


def test_choices_match_without_case_and_keep_the_canonical_spelling():
    settings = parse_settings(
        ["--log-level", "debug", "--log-format", "JSON", "--cudnn-conv-algo-search", "heuristic"]
    )
    assert (settings.log_level, settings.log_format, settings.cudnn_conv_algo_search) == (
        "DEBUG",
        "json",
        "HEURISTIC",
    )


def test_provider_names_are_matched_without_case():
    assert parse_settings(["--providers", "cpuexecutionprovider"]).providers == (
        "CPUExecutionProvider",
    )


def test_model_batching_overrides_apply_on_top_of_the_server_wide_flags():
    settings = parse_settings(
        ["--max-queue-rows", "99", "--model-batching", '{"m": {"max_batch_size": 8}}']
    )
    config = settings.batching_for("m")
    assert (config.max_batch_size, config.max_queue_rows) == (8, 99)


def test_model_batching_reads_a_file(tmp_path):
    path = tmp_path / "batching.json"
    path.write_text('{"m": {"enabled": false}}')
    assert parse_settings(["--model-batching", f"@{path}"]).batching_for("m").enabled is False


# --------------------------------------------------------------------- --processes, --health-port


def test_processes_default_is_one_per_core_this_process_may_run_on():
    assert parse_settings([]).process_count() == len(os.sched_getaffinity(0)) == usable_cores()


def test_processes_reads_its_variable(monkeypatch):
    monkeypatch.setenv("VAE_PROCESSES", "3")
    assert parse_settings([]).process_count() == 3


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], 0),  # plaintext: the probes can use the gRPC port; no extra listener
        (["--tls-cert", "c.pem"], DEFAULT_HEALTH_PORT),
        (["--tls-cert", "c.pem", "--health-port", "0"], 0),
        (["--tls-cert", "c.pem", "--health-port", "50060"], 50060),
        (["--health-port", "50060"], 50060),
    ],
)
def test_health_port_is_on_by_default_with_tls_only(argv, expected):
    assert parse_settings(argv).resolved_health_port() == expected


def test_health_port_reads_its_variable(monkeypatch):
    monkeypatch.setenv("VAE_HEALTH_PORT", "50070")
    assert parse_settings([]).resolved_health_port() == 50070


def test_settings_built_in_code_refuse_a_health_port_clash_too():
    with pytest.raises(ValueError, match="also --port"):
        Settings(port=DEFAULT_HEALTH_PORT, tls_cert="c.pem")


# ----------------------------------------------------------------------------------- vae-train


def train_config(*argv: str):
    return parse_config(list(argv))


@pytest.mark.parametrize(("word", "value"), [("Yes", True), ("off", False), ("1", True)])
def test_train_boolean_flags_and_variables_take_the_same_words(monkeypatch, word, value):
    monkeypatch.setenv("VAE_AMP", word)
    assert (train_config().amp, train_config("--amp", word).amp) == (value, value)


def run(*command: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("VAE_")}, **(env or {})},
    )


@pytest.mark.parametrize(
    ("argv", "environment"),
    [
        (["vae-serve"], {"VAE_PORT": "abc"}),
        (["vae-serve"], {"VAE_LOG_FORMAT": "xml"}),
        (["vae-client", "sample", "--count", "0"], {}),
        (["vae-bench", "--samples", "0"], {}),
        (["vae-train"], {"VAE_EPOCHS": "many"}),
        (["vae-train", "prior", "runs/x"], {"VAE_PRIOR_COMPONENTS": "ten"}),
        (["vae-train", "prior", "--help"], {"VAE_PRIOR_COMPONENTS": "ten"}),
        (["vae-train", "quality", "runs/x", "--k", "0"], {}),
        (["vae-train", "experiment", "beta"], {"VAE_EXPERIMENT_EPOCHS": "x"}),
        (["vae-export", "runs"], {"VAE_EXPORT_WHICH": "worst"}),
    ],
    ids=[
        "vae-serve port",
        "vae-serve log format",
        "vae-client",
        "vae-bench",
        "vae-train",
        "vae-train prior",
        "vae-train prior --help",
        "vae-train quality",
        "vae-train experiment",
        "vae-export",
    ],
)
def test_console_scripts_exit_2_with_one_line_and_no_traceback(argv, environment):
    result = run(str(BIN / argv[0]), *argv[1:], env=environment)
    if argv[-1] == "--help":  # help never reads a variable, so a bad one cannot break it
        assert (result.returncode, result.stderr, "usage:" in result.stdout) == (0, "", True)
        return
    assert (result.returncode, len(result.stderr.splitlines())) == (2, 1), result.stderr
    assert "Traceback" not in result.stderr


def test_train_yaml_mistake_exits_2_with_one_line(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("epochs: many\n")
    result = run(str(BIN / "vae-train"), "--config", str(config))
    assert (result.returncode, result.stderr.strip()) == (
        2,
        f"vae-train: {config}: field 'epochs' = 'many': expected an integer (like 10)",
    )


# ----------------------------------------------------------- installs without an extra's modules

# Imported at interpreter start-up (PYTHONPATH), before the console script runs: every module named
# in BLOCKED_MODULES is then "not installed", as in an install without the extra that brings it.
SITECUSTOMIZE = """
import importlib.abc, os, sys

BLOCKED = set(os.environ["BLOCKED_MODULES"].split(","))


class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, NotInstalled())
"""


def run_without(blocked: str, tmp_path: Path, *command: str) -> subprocess.CompletedProcess:
    (tmp_path / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {"PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}", "BLOCKED_MODULES": blocked}
    return run(*command, env=env)


@pytest.mark.parametrize(
    "argv",
    [["vae-train", "--help"], ["vae-train", "experiment", "beta"], ["vae-export", "runs/"]],
    ids=["vae-train", "vae-train experiment", "vae-export"],
)
def test_torch_free_install_says_to_install_the_train_extra(tmp_path, argv):
    result = run_without("torch,torchvision", tmp_path, str(BIN / argv[0]), *argv[1:])
    assert (result.returncode, len(result.stderr.splitlines())) == (2, 1), result.stderr
    assert "torch is not installed" in result.stderr
    assert "pip install 'vae-service[train,cpu]'" in result.stderr


def test_install_without_onnxruntime_makes_vae_serve_name_the_cpu_and_gpu_extras(tmp_path):
    result = run_without("onnxruntime", tmp_path, str(BIN / "vae-serve"), "--port", "0")
    assert (result.returncode, len(result.stderr.splitlines())) == (2, 1), result.stderr
    assert "'vae-service[cpu]'" in result.stderr and "'vae-service[gpu]'" in result.stderr


def test_install_without_onnxruntime_still_runs_vae_client(tmp_path):
    result = run_without("onnxruntime", tmp_path, str(BIN / "vae-client"), "--help")
    assert (result.returncode, "sample" in result.stdout) == (0, True), result.stderr


def test_install_without_onnxruntime_makes_in_process_bench_name_the_extras(tmp_path):
    result = run_without(
        "onnxruntime", tmp_path, str(BIN / "vae-bench"), "--in-process", "--model", "m"
    )
    assert (result.returncode, "'vae-service[cpu]'" in result.stderr) == (2, True), result.stderr
