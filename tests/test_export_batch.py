"""`vae-export <dir-of-runs>`: every run exported once, re-runs skipped, broken runs reported, versions."""

from __future__ import annotations

import contextlib
import io
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from export.cli import main
from export.pipeline import find_checkpoints
from server.repository import list_versions, read_metadata
from training.checkpoint import save_checkpoint


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str


def vae_export(*args: str | Path) -> Run:
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main([str(a) for a in args])
    return Run(code, stdout.getvalue(), stderr.getvalue())


def retrained(checkpoint: Path, destination: Path, epoch: int) -> Path:
    """A different checkpoint of the same run, as a later epoch would write it (new sha256)."""
    document = torch.load(checkpoint, weights_only=True)
    document["epoch"] = epoch
    document["metrics"] = {**document["metrics"], "test_elbo": document["metrics"]["test_elbo"] + 1}
    save_checkpoint(destination, {k: v for k, v in document.items() if not k.startswith("format")})
    return destination


def row(stdout: str, model: str) -> str:
    """The table row of `model`."""
    (line,) = [line for line in stdout.splitlines() if f"  {model}  " in line]
    return line


@dataclass
class BatchRuns:
    runs: Path
    repository: Path
    first: Run
    second: Run


@pytest.fixture(scope="module")
def batch(tmp_path_factory, trained_runs, mnist_dir) -> BatchRuns:
    """A runs folder with a VAE, an AE and a broken run, exported twice into one repository."""
    runs = tmp_path_factory.mktemp("runs")
    for run_dir in (trained_runs.vae, trained_runs.ae):
        shutil.copytree(run_dir, runs / run_dir.name)
    (runs / "broken").mkdir()
    good = (trained_runs.vae / "best.pt").read_bytes()
    (runs / "broken" / "best.pt").write_bytes(good[: len(good) // 2])  # a crash mid-copy
    repository = tmp_path_factory.mktemp("repository")
    args = (runs, "--repository", repository, "--data-dir", mnist_dir)
    first = vae_export(*args)
    second = vae_export(*args)
    return BatchRuns(runs, repository, first, second)


def test_batch_exports_every_good_run_as_version_1(batch):
    assert {n: list_versions(batch.repository / n) for n in ("tiny-vae", "tiny-ae")} == {
        "tiny-vae": [1],
        "tiny-ae": [1],
    }


def test_batch_exit_code_is_non_zero_when_a_checkpoint_failed(batch):
    assert batch.first.code == 1


def test_batch_table_reports_the_broken_checkpoint_with_its_reason(batch):
    line = row(batch.first.stdout, "broken")
    assert line.startswith("failed") and "truncated or corrupt" in line


def test_batch_summary_counts_exported_skipped_and_failed(batch):
    assert "2 exported, 0 skipped, 1 failed" in batch.first.stdout


def test_batch_table_has_a_row_per_checkpoint_with_version_and_parity(batch):
    line = row(batch.first.stdout, "tiny-vae")
    assert line.split()[:3] == ["exported", "tiny-vae", "1"]


def test_second_batch_skips_checkpoints_already_exported(batch):
    assert "0 exported, 2 skipped, 1 failed" in batch.second.stdout


def test_second_batch_says_which_version_holds_the_same_sha256(batch):
    assert "same sha256 as version 1" in row(batch.second.stdout, "tiny-ae")


def test_skipped_checkpoints_add_no_version(batch):
    assert list_versions(batch.repository / "tiny-vae") == [1]


def test_broken_run_leaves_nothing_in_the_repository(batch):
    assert not (batch.repository / "broken").exists()


def test_a_new_checkpoint_of_a_run_becomes_the_next_version(tmp_path, trained_runs, mnist_dir):
    repository = tmp_path / "repo"
    checkpoint = trained_runs.ae / "best.pt"
    newer = retrained(checkpoint, tmp_path / "tiny-ae" / "best.pt", epoch=7)
    for source in (checkpoint, newer):
        assert vae_export(source, "--repository", repository, "--data-dir", mnist_dir).code == 0
    assert read_metadata(repository / "tiny-ae" / "2").metrics["epoch"] == 7


def test_force_exports_the_same_checkpoint_again(tmp_path, trained_runs, mnist_dir):
    repository = tmp_path / "repo"
    args = (trained_runs.ae / "best.pt", "--repository", repository, "--data-dir", mnist_dir)
    vae_export(*args)
    vae_export(*args, "--force")
    assert list_versions(repository / "tiny-ae") == [1, 2]


def test_which_last_finds_only_last_checkpoints(tmp_path, trained_runs):
    shutil.copytree(trained_runs.vae, tmp_path / "runs" / "a")
    shutil.copytree(trained_runs.ae, tmp_path / "runs" / "b")
    found = find_checkpoints(tmp_path / "runs", "last")
    assert [(p.parent.name, p.name) for p in found] == [("a", "last.pt"), ("b", "last.pt")]


def test_which_last_exports_the_last_checkpoint(tmp_path, trained_runs, mnist_dir):
    run = tmp_path / "runs" / "tiny-ae"
    shutil.copytree(trained_runs.ae, run)
    retrained(run / "best.pt", run / "last.pt", epoch=42)
    args = ("--repository", tmp_path / "repo", "--data-dir", mnist_dir, "--which", "last")
    assert vae_export(tmp_path / "runs", *args).code == 0
    assert read_metadata(tmp_path / "repo" / "tiny-ae" / "1").metrics["epoch"] == 42


def test_directory_without_checkpoints_is_an_error_naming_what_was_looked_for(tmp_path):
    run = vae_export(tmp_path, "--repository", tmp_path / "repo")
    assert (run.code, run.stderr.strip()) == (2, f"vae-export: no best.pt under {tmp_path}")


def test_unlisted_dataset_falls_back_to_noise_and_says_so(tmp_path, trained_runs, mnist_dir):
    checkpoint = trained_runs.vae / "best.pt"
    document = torch.load(checkpoint, weights_only=True)
    document["dataset"] = "celeba"  # an image folder export cannot read
    foreign = tmp_path / "faces" / "best.pt"
    save_checkpoint(foreign, {k: v for k, v in document.items() if not k.startswith("format")})
    run = vae_export(foreign, "--repository", tmp_path / "repo", "--name", "faces")
    assert read_metadata(tmp_path / "repo" / "faces" / "1").parity_inputs == (
        "uniform noise: celeba not loadable here (ValueError)"
    ), run.stdout


def test_fp16_of_an_exported_checkpoint_is_not_skipped(tmp_path, trained_runs, mnist_dir):
    repository = tmp_path / "repo"
    args = (trained_runs.vae / "best.pt", "--repository", repository, "--data-dir", mnist_dir)
    vae_export(*args)
    vae_export(*args, "--precision", "fp16")
    assert read_metadata(repository / "tiny-vae-fp16" / "1").precision == "fp16"


def test_published_versions_are_readable_by_other_users(batch):
    """A server may run as another user than the export Job; mkdtemp's 0700 must not survive."""
    assert (batch.repository / "tiny-vae" / "1").stat().st_mode & 0o055 == 0o055
