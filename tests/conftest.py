"""Shared fixtures: real MNIST files, tiny trained models, an exported repository, a live server."""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("VAE_SHARED_DATA", ROOT.parent / "shared" / "data"))
MNIST_T10K = SHARED_DATA / "mnist-t10k"
CELEBA_SAMPLE = SHARED_DATA / "celeba-sample"


def _random_order(config: pytest.Config) -> str | None:
    """The line that says how to repeat this run's order (pytest-randomly), None when not random."""
    if not config.pluginmanager.has_plugin("randomly"):
        return None
    seed = config.getoption("randomly_seed", None)
    return f"random order, seed {seed}: pytest --randomly-seed={seed} repeats it"


def pytest_collection_finish(session: pytest.Session) -> None:
    """Say the seed before the first test too (pytest-randomly's header is hidden by -q)."""
    line = _random_order(session.config)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if line and reporter is not None:
        reporter.write_line(line)


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    line = _random_order(config)
    if line:
        terminalreporter.write_line(line)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A plain folder of the four MNIST .gz files: the real t10k set stands in for both splits."""
    if not (MNIST_T10K / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.fail(
            f"test data missing: {MNIST_T10K} (set VAE_SHARED_DATA to the shared/data folder)"
        )
    folder = tmp_path_factory.mktemp("mnist")
    for split in ("train", "t10k"):
        for kind in ("images-idx3", "labels-idx1"):
            shutil.copy(MNIST_T10K / f"t10k-{kind}-ubyte.gz", folder / f"{split}-{kind}-ubyte.gz")
    return folder


def tiny_train_config(run_dir: Path, data_dir: Path, **model_overrides):
    """A few dozen steps of a small MLP on real MNIST: seconds on two cores."""
    from training.config import TrainConfig
    from training.models import ModelConfig

    model = ModelConfig(hidden_dims=(64,), latent_dim=8, **model_overrides)
    return TrainConfig(
        dataset="mnist",
        data_dir=str(data_dir),
        run_dir=str(run_dir),
        epochs=2,
        batch_size=64,
        val_size=500,
        train_subset=1000,
        max_steps=30,
        eval_batch_size=500,
        # The two-stage prior is trained where a test asks for it (tests/test_two_stage.py): the
        # shared runs stay quick, and their versions carry N(0, I) and the mixture.
        prior_two_stage=False,
        model=model,
    )


@dataclass
class TrainedRuns:
    vae: Path  # run directories, each with best.pt and last.pt
    cvae: Path
    ae: Path


@pytest.fixture(scope="session")
def trained_runs(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path) -> TrainedRuns:
    from training.train import train

    root = tmp_path_factory.mktemp("runs")
    runs = {}
    for kind, overrides in (
        ("vae", {}),
        ("cvae", {"kind": "cvae", "num_classes": 10}),
        ("ae", {"kind": "ae"}),
    ):
        run_dir = root / f"tiny-{kind}"
        train(tiny_train_config(run_dir, mnist_dir, **overrides))
        runs[kind] = run_dir
    return TrainedRuns(**runs)


@pytest.fixture(scope="session")
def repository(
    tmp_path_factory: pytest.TempPathFactory, trained_runs: TrainedRuns, mnist_dir: Path
) -> Path:
    """A model repository holding tiny-vae, tiny-cvae and tiny-ae, version 1 each."""
    from export.pipeline import export_checkpoint

    repo = tmp_path_factory.mktemp("repository")
    for run_dir in (trained_runs.vae, trained_runs.cvae, trained_runs.ae):
        result = export_checkpoint(run_dir / "best.pt", repo, data_dir=mnist_dir)
        assert result.status == "exported", result.detail
    return repo


@dataclass
class LiveServer:
    address: str
    metrics_url: str
    server: object  # server.process.app.VaeServer


@pytest.fixture(scope="session")
def live_server(repository: Path) -> Iterator[LiveServer]:
    """The real gRPC server on a loopback port, metrics on another, for the whole session."""
    from server.process.app import VaeServer
    from server.process.settings import Limits, Settings

    settings = Settings(
        repository=repository,
        host="127.0.0.1",
        port=0,
        http_port=free_port(),
        metrics_host="127.0.0.1",
        metrics_port=free_port(),
        providers=("CPUExecutionProvider",),
        limits=Limits(
            max_batch=256,
            max_samples=128,
            max_interpolation_steps=32,
            max_message_bytes=4 * 1024 * 1024,
        ),
        grace_seconds=2.0,
    )
    server = VaeServer(settings)
    port = server.start()
    yield LiveServer(f"127.0.0.1:{port}", f"http://127.0.0.1:{server.metrics_port}/metrics", server)
    server.stop(grace=1.0)
