"""Data-parallel training: `torchrun` with two CPU processes (gloo) trains one model on sharded data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from training.checkpoint import load_checkpoint

TORCHRUN = Path(sys.executable).parent / "torchrun"


def vae_train_args(run_dir: Path, data_dir: Path) -> list[str]:
    return [
        "--dataset", "mnist", "--data-dir", str(data_dir), "--run-dir", str(run_dir),
        "--epochs", "1", "--batch-size", "64", "--train-subset", "640", "--val-size", "200",
        "--hidden-dims", "32", "--latent-dim", "4", "--threads", "1", "--progress", "false",
        "--tensorboard", "false", "--figures", "false", "--iwae-samples", "0", "--device", "cpu",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path) -> Path:
    run_dir = tmp_path_factory.mktemp("ddp") / "run"
    command = [
        str(TORCHRUN), "--standalone", "--nproc-per-node", "2", "-m", "training.cli",
        *vae_train_args(run_dir, mnist_dir),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return run_dir


def test_two_processes_write_one_loadable_checkpoint(ddp_run: Path) -> None:
    assert load_checkpoint(ddp_run / "best.pt")["epoch"] == 1


def test_each_process_trains_on_half_the_data(ddp_run: Path) -> None:
    # 640 rows in batches of 64 are 10 steps for one process; sharded over two, 5 each.
    assert json.loads((ddp_run / "metrics.json").read_text())["steps"] == 5


def test_summary_records_the_world_size(ddp_run: Path) -> None:
    assert json.loads((ddp_run / "metrics.json").read_text())["world_size"] == 2
