"""The Dockerfile and the container health check: what each image installs, runs and exposes.

No container engine here: the Dockerfile is read with BuildKit's own parser (the `dockerfile`
package), the package set of each image is asked of uv.lock with `uv export` and the same flags the
Dockerfile gives `uv sync`, and the health check script runs against real gRPC servers.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
import socket
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import dockerfile
import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from server.process.settings import DEFAULT_HEALTH_PORT, Settings, build_parser, parse_settings

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
HEALTHCHECK = ROOT / "docker" / "healthcheck.py"
SERVING_STAGES = ("serve", "serve-cpu")
FINAL_STAGES = ("serve", "serve-cpu", "train")


@dataclass
class Stage:
    name: str
    base: str  # the FROM image or stage, build arguments resolved
    commands: list[dockerfile.Command] = field(default_factory=list)

    def all(self, instruction: str) -> list[dockerfile.Command]:
        return [c for c in self.commands if c.cmd == instruction]

    def last(self, instruction: str) -> dockerfile.Command:
        found = self.all(instruction)
        assert found, f"stage {self.name} has no {instruction}"
        return found[-1]

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for command in self.all("ENV"):
            pairs = command.value  # (key, value, key, value, ...)
            values.update(zip(pairs[::2], pairs[1::2], strict=True))
        return values


def parse_stages(path: Path = DOCKERFILE) -> list[Stage]:
    commands = dockerfile.parse_file(str(path))
    global_args = {}
    stages: list[Stage] = []
    for command in commands:
        if command.cmd == "ARG" and not stages:
            name, _, default = command.value[0].partition("=")
            global_args[name] = default
        elif command.cmd == "FROM":
            image = re.sub(
                r"\$\{(\w+)\}", lambda m: global_args.get(m.group(1), m.group(0)), command.value[0]
            )
            stage_name = command.value[2] if len(command.value) >= 3 else str(len(stages))
            stages.append(Stage(stage_name, image))
        elif stages:
            stages[-1].commands.append(command)
    return stages


STAGES = {stage.name: stage for stage in parse_stages()}


def global_arg(name: str) -> str:
    for command in dockerfile.parse_file(str(DOCKERFILE)):
        if command.cmd == "FROM":
            break
        if command.cmd == "ARG" and command.value[0].startswith(f"{name}="):
            return command.value[0].split("=", 1)[1]
    raise AssertionError(f"the Dockerfile declares no global ARG {name}")


def environment_stage(final_stage: str) -> Stage:
    """The stage whose /opt/venv a final image copies."""
    for command in STAGES[final_stage].all("COPY"):
        source = next((f.split("=", 1)[1] for f in command.flags if f.startswith("--from=")), None)
        if source and command.value[0] == "/opt/venv":
            return STAGES[source]
    raise AssertionError(f"stage {final_stage} copies no /opt/venv from another stage")


def uv_sync_commands(stage: Stage) -> list[list[str]]:
    commands = []
    for run in stage.all("RUN"):
        for part in re.split(r"&&", run.value[0]):
            words = shlex.split(part)
            if words[:2] == ["uv", "sync"]:
                commands.append(words)
    assert commands, f"stage {stage.name} runs no `uv sync`"
    return commands


def locked_packages(final_stage: str) -> set[str]:
    """Package names uv.lock resolves for the `uv sync` flags of this image's environment stage."""
    sync = uv_sync_commands(environment_stage(final_stage))[-1]
    export = [
        "export",
        "--frozen",
        "--no-hashes",
        "--no-header",
        "--no-annotate",
        "--no-emit-project",
    ]
    words = iter(sync[2:])
    for word in words:
        if word == "--extra":
            export += ["--extra", next(words)]
        elif word == "--all-extras":
            export.append("--all-extras")
        elif word == "--no-install-package":
            export += ["--no-emit-package", next(words)]
    result = subprocess.run(
        [str(ROOT / "scripts" / "uv.sh"), *export],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return {
        line.split("==")[0].strip().lower()
        for line in result.stdout.splitlines()
        if "==" in line and not line.startswith("#")
    }


def server_env_names() -> set[str]:
    """VAE_* variables vae-serve reads: one per option of its real parser."""
    return {
        "VAE_" + action.dest.upper()
        for action in build_parser()._actions
        if action.option_strings and action.dest != "help"
    }


# ------------------------------------------------------------------------------------- stages


def test_every_stage_base_resolves_from_the_global_build_arguments():
    assert [s.name for s in STAGES.values() if "$" in s.base] == []


def test_every_copy_from_names_an_earlier_stage():
    names = list(STAGES)
    late = [
        (stage.name, source)
        for index, stage in enumerate(STAGES.values())
        for c in stage.all("COPY")
        for source in (f.split("=", 1)[1] for f in c.flags if f.startswith("--from="))
        if source not in names[:index]
    ]
    assert late == []


def test_default_build_target_is_the_gpu_server():
    assert list(STAGES)[-1] == "serve"


def test_gpu_server_base_is_a_cuda_runtime_with_cudnn():
    assert re.fullmatch(
        r"nvidia/cuda:\d+\.\d+\.\d+-cudnn-runtime-ubuntu\d+\.\d+", STAGES["serve"].base
    )


def test_cuda_base_is_cuda_13_which_the_locked_onnxruntime_gpu_links():
    # onnxruntime-gpu 1.31.1 links libcudart.so.13 (see the Dockerfile's header for the evidence).
    assert STAGES["serve"].base.split(":")[1].startswith("13.")


def test_onnxruntime_gpu_version_checked_against_is_the_locked_one():
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    locked = {p["version"] for p in lock["package"] if p["name"] == "onnxruntime-gpu"}
    assert locked == {global_arg("ONNXRUNTIME_GPU_VERSION")}, (
        "uv.lock moved onnxruntime-gpu: check which CUDA and cuDNN it needs, update CUDA_IMAGE "
        "and ONNXRUNTIME_GPU_VERSION in the Dockerfile"
    )


@pytest.mark.parametrize("stage", ["serve-env", "serve-cpu-env", "train-env"])
def test_every_uv_sync_installs_from_the_lockfile_unchanged(stage):
    assert all("--frozen" in words for words in uv_sync_commands(STAGES[stage]))


# ------------------------------------------------------------------------ what each image holds


@pytest.mark.parametrize("stage", SERVING_STAGES)
def test_serving_image_installs_no_torch(stage):
    assert not {"torch", "torchvision"} & locked_packages(stage)


ONNXRUNTIMES = {"onnxruntime", "onnxruntime-gpu"}


@pytest.mark.parametrize(
    ("stage", "runtime"),
    [("serve", "onnxruntime-gpu"), ("serve-cpu", "onnxruntime"), ("train", "onnxruntime")],
)
def test_image_installs_exactly_one_onnxruntime_distribution(stage, runtime):
    # The two wheels ship the same `onnxruntime` module and overwrite each other's files.
    assert locked_packages(stage) & ONNXRUNTIMES == {runtime}


@pytest.mark.parametrize("stage", ["serve-env", "serve-cpu-env", "train-env"])
def test_environment_stage_checks_that_one_onnxruntime_got_in(stage):
    runs = " ".join(run.value[0] for run in STAGES[stage].all("RUN"))
    assert '"$ONE_ONNXRUNTIME"' in runs and "ONE_ONNXRUNTIME" in STAGES["build"].env()


def test_train_image_installs_torch():
    assert "torch" in locked_packages("train")


# ------------------------------------------------------------------- extras: one onnxruntime each


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def requirement_names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0].lower() for r in requirements}


def pip_install_names(*extras: str) -> set[str]:
    """What `pip install '.[extras]'` asks for directly (pip reads pyproject.toml, not uv.lock)."""
    project = pyproject()["project"]
    names = requirement_names(project["dependencies"])
    for extra in extras:
        names |= requirement_names(project["optional-dependencies"][extra])
    return names


@pytest.mark.parametrize(
    ("extras", "expected"),
    [
        ((), set()),
        (("cpu",), {"onnxruntime"}),
        (("gpu",), {"onnxruntime-gpu"}),
        (("train",), set()),
    ],
)
def test_pip_install_of_each_extra_asks_for_at_most_one_onnxruntime(extras, expected):
    assert pip_install_names(*extras) & ONNXRUNTIMES == expected


def locked_export(*flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(ROOT / "scripts" / "uv.sh"), "export", "--frozen", "--no-hashes", "--no-header",
         "--no-annotate", "--no-emit-project", *flags],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("extras", "expected"),
    [
        ((), set()),
        (("gpu",), {"onnxruntime-gpu"}),
        (("cpu",), {"onnxruntime"}),
        (("train", "gpu"), {"onnxruntime-gpu"}),
        (("train", "cpu", "dev"), {"onnxruntime"}),
    ],
)
def test_locked_install_of_each_extra_set_resolves_at_most_one_onnxruntime(extras, expected):
    result = locked_export(*[f for extra in extras for f in ("--extra", extra)])
    names = {line.split("==")[0].lower() for line in result.stdout.splitlines() if "==" in line}
    assert (result.returncode, names & ONNXRUNTIMES) == (0, expected), result.stderr


def test_uv_refuses_the_cpu_and_gpu_extras_together():
    result = locked_export("--extra", "cpu", "--extra", "gpu")
    assert result.returncode != 0 and "incompatible" in result.stderr


@pytest.mark.parametrize("stage", SERVING_STAGES)
def test_serving_image_copies_in_the_server_and_client_packages_only(stage):
    sources = {
        c.value[0] for c in environment_stage(stage).all("COPY") if not c.flags and len(c.value) > 1
    }
    assert {s for s in sources if (ROOT / s).is_dir()} == {"server", "client"}


# -------------------------------------------------------------------------- how the image runs


@pytest.mark.parametrize("stage", FINAL_STAGES)
def test_image_runs_as_a_numeric_non_root_user(stage):
    user = STAGES[stage].last("USER").value[0].split(":")[0]
    assert user.isdigit() and int(user) != 0


@pytest.mark.parametrize("stage", SERVING_STAGES)
def test_image_exposes_the_servers_default_grpc_http_metrics_and_health_ports(stage):
    exposed = {int(p.split("/")[0]) for c in STAGES[stage].all("EXPOSE") for p in c.value}
    defaults = Settings()
    assert exposed == {
        defaults.port,
        defaults.http_port,
        defaults.metrics_port,
        DEFAULT_HEALTH_PORT,
    }


@pytest.mark.parametrize("stage", SERVING_STAGES)
def test_image_leaves_the_process_count_to_the_cores_it_may_run_on(stage):
    assert "VAE_PROCESSES" not in STAGES[stage].env()


@pytest.mark.parametrize("stage", SERVING_STAGES)
def test_entrypoint_is_vae_serve_in_exec_form(stage):
    entrypoint = STAGES[stage].last("ENTRYPOINT")
    assert (entrypoint.json, entrypoint.value) == (True, ("vae-serve",))


def test_vae_serve_is_the_console_script_of_the_server_cli():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["vae-serve"] == "server.process.cli:main"


@pytest.mark.parametrize("stage", SERVING_STAGES)
def test_every_vae_variable_the_image_sets_is_a_server_option(stage):
    names = {k for k in STAGES[stage].env() if k.startswith("VAE_")}
    assert names and names <= server_env_names()


@pytest.mark.parametrize("stage", SERVING_STAGES)
def test_image_providers_are_onnxruntime_provider_names(stage):
    import onnxruntime

    providers = STAGES[stage].env()["VAE_PROVIDERS"].split(",")
    assert set(providers) <= set(onnxruntime.get_all_providers())


@pytest.mark.parametrize("stage", SERVING_STAGES)
def test_healthcheck_runs_the_script_the_image_copies_in(stage):
    command = (
        STAGES[stage].last("HEALTHCHECK").value
    )  # ("CMD", "python", "/opt/vae/healthcheck.py")
    copied = {c.value[-1]: c.value[0] for c in STAGES[stage].all("COPY") if not c.flags}
    assert (ROOT / copied[command[2]]).resolve() == HEALTHCHECK


@pytest.mark.parametrize("stage", FINAL_STAGES)
def test_image_points_home_at_tmp_for_a_read_only_root_filesystem(stage):
    assert STAGES[stage].env()["HOME"] == "/tmp"


# ---------------------------------------------------------------------------------- .dockerignore


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


@pytest.mark.parametrize("path", [".venv", ".git", "runs", "model_repository", "demo_output"])
def test_dockerignore_keeps_local_state_out_of_the_build_context(path):
    assert path in dockerignore_patterns()


def test_dockerignore_keeps_every_file_the_dockerfile_copies():
    sources = {
        s
        for stage in STAGES.values()
        for c in stage.all("COPY")
        if not c.flags
        for s in c.value[:-1]
    }
    ignored = {
        s
        for s in sources
        for p in dockerignore_patterns()
        if fnmatch.fnmatch(s, p) or s.startswith(p.rstrip("/") + "/")
    }
    assert sources and not ignored


# ---------------------------------------------------------------------------- the health check


def run_healthcheck(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The script as the HEALTHCHECK runs it, with only `env`'s VAE_* variables set."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("VAE_")}
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**environment, **(env or {})},
    )


def load_healthcheck_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("healthcheck", HEALTHCHECK)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_healthcheck_default_ports_are_the_servers():
    module = load_healthcheck_module()
    defaults = (module.DEFAULT_PORT, module.DEFAULT_HEALTH_PORT)
    assert defaults == (Settings().port, DEFAULT_HEALTH_PORT)


@pytest.mark.parametrize(
    "environment",
    [
        {},
        {"VAE_PORT": "6000"},
        {"VAE_TLS_CERT": "c.pem"},
        {"VAE_TLS_CERT": "c.pem", "VAE_HEALTH_PORT": "50060", "VAE_PORT": "6000"},
        {"VAE_HEALTH_PORT": "50070", "VAE_PORT": "6000"},
        {"VAE_HEALTH_PORT": "0", "VAE_PORT": "6001"},
        {"VAE_HEALTH_PORT": "", "VAE_TLS_CERT": ""},
    ],
)
def test_healthcheck_asks_the_plaintext_port_that_the_same_variables_give_the_server(
    environment, monkeypatch
):
    for name in server_env_names():
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    settings = parse_settings([])
    expected = settings.resolved_health_port() or settings.port
    assert load_healthcheck_module().plaintext_port(environment) == expected


@pytest.mark.parametrize(
    ("environment", "fragment"),
    [
        ({"VAE_HEALTH_PORT": "abc"}, "VAE_HEALTH_PORT='abc': expected an integer from 0 to 65535"),
        ({"VAE_PORT": "99999"}, "VAE_PORT='99999': expected an integer from 0 to 65535"),
        ({"VAE_TLS_CERT": "c.pem", "VAE_HEALTH_PORT": "0"}, "nothing answers a plaintext check"),
    ],
)
def test_healthcheck_reports_a_bad_configuration_as_unhealthy_on_one_line(environment, fragment):
    # Docker reserves exit status 2 for health checks: every failure is 1.
    result = run_healthcheck(env=environment)
    assert (result.returncode, result.stdout.count("\n")) == (1, 1), result.stdout
    assert fragment in result.stdout


def test_healthcheck_asks_for_the_service_the_server_reports():
    from server.process.app import SERVICE_NAME

    assert load_healthcheck_module().DEFAULT_SERVICE == SERVICE_NAME


@contextmanager
def health_only_server(status: int) -> Iterator[int]:
    """A gRPC server with only grpc.health.v1, reporting vae.v1.VaeService as `status`; its port."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    servicer.set("vae.v1.VaeService", status)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port
    finally:
        server.stop(0)


@pytest.fixture
def not_serving_server() -> Iterator[str]:
    """A health service reporting vae.v1.VaeService NOT_SERVING, as while draining."""
    with health_only_server(health_pb2.HealthCheckResponse.NOT_SERVING) as port:
        yield f"127.0.0.1:{port}"


def test_healthcheck_asks_the_health_port_when_tls_is_on():
    with health_only_server(health_pb2.HealthCheckResponse.SERVING) as port:
        env = {"VAE_TLS_CERT": "/tls/server.pem", "VAE_HEALTH_PORT": str(port), "VAE_PORT": "1"}
        result = run_healthcheck(env=env)
    assert (result.returncode, f"127.0.0.1:{port}" in result.stdout) == (0, True), result.stdout


@pytest.mark.slow
def test_healthcheck_passes_against_a_serving_vae_serve(live_server):
    assert run_healthcheck("--address", live_server.address).returncode == 0


def test_healthcheck_fails_while_the_server_reports_not_serving(not_serving_server):
    assert run_healthcheck("--address", not_serving_server).returncode == 1


def test_healthcheck_fails_when_nothing_listens():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        unused = s.getsockname()[1]
    assert run_healthcheck("--address", f"127.0.0.1:{unused}", "--timeout", "2").returncode == 1
