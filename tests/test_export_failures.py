"""Bad inputs to export: each refused with a message saying what was wrong, and nothing half-written."""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from export.cli import main
from export.parity import ParityError
from export.pipeline import export_checkpoint
from server.inference.sessions import RuntimeOptions
from server.inference.store import ModelStore
from server.repository import ModelMetadata, RepositoryError, list_versions

ROOT = Path(__file__).resolve().parent.parent


class Payload:
    """What an attacker would pickle: unpickling it would create the file named in `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _evil_zip(path: Path) -> None:
    torch.save({"format": "vae-service-checkpoint", "payload": Payload(path.parent / "ran")}, path)


def _good_prefix(path: Path, trained: Path) -> None:
    path.write_bytes((trained / "best.pt").read_bytes()[:20_000])  # a copy cut short


# (name, how to write the file, the words its one-line reason must hold)
BAD_CHECKPOINTS = [
    ("empty", lambda p, _: p.write_bytes(b""), "empty file (0 bytes), not a checkpoint"),
    ("truncated", _good_prefix, "truncated or corrupt (20000 bytes"),
    ("zip magic only", lambda p, _: p.write_bytes(b"PK\x03\x04 no zip"), "truncated or corrupt"),
    ("text", lambda p, _: p.write_text("hello\n"), "not a vae-train checkpoint (neither"),
    ("pickle", lambda p, _: p.write_bytes(pickle.dumps({"a": 1})), "(a pickle stream;"),
    ("objects", lambda p, _: _evil_zip(p), "holds Python objects besides tensors"),
    (
        "foreign zip",
        lambda p, _: __import__("zipfile").ZipFile(p, "w").close(),
        "not a vae-train checkpoint",
    ),
]


@pytest.mark.parametrize(
    ("name", "write", "words"), BAD_CHECKPOINTS, ids=[b[0] for b in BAD_CHECKPOINTS]
)
def test_a_bad_checkpoint_fails_with_one_line_in_our_words(
    tmp_path, trained_runs, name, write, words
):
    checkpoint = tmp_path / "run" / "best.pt"
    checkpoint.parent.mkdir()
    write(checkpoint, trained_runs.vae)
    result = export_checkpoint(checkpoint, tmp_path / "repo")
    assert result.status == "failed" and words in result.detail, result.detail
    # PyTorch's own text (its advice to load with weights_only=False) never reaches the user.
    assert "weights_only" not in result.detail and "\n" not in result.detail
    assert not (tmp_path / "run" / "ran").exists()


def test_the_export_table_gives_each_bad_checkpoint_a_reason_and_no_traceback(tmp_path, capsys):
    for name, content in (("empty", b""), ("text", b"hello\n"), ("random", os.urandom(4096))):
        (tmp_path / "runs" / name).mkdir(parents=True)
        (tmp_path / "runs" / name / "best.pt").write_bytes(content)
    assert main([str(tmp_path / "runs"), "--repository", str(tmp_path / "repo")]) == 1
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("failed")]
    reasons = {row.split()[1]: row.partition("  (")[2] for row in rows}
    assert set(reasons) == {"empty", "text", "random"}
    assert reasons["empty"].startswith("empty file (0 bytes)")
    assert all(r and "weights_only" not in r and str(tmp_path) not in r for r in reasons.values())


def test_foreign_torch_file_is_refused_as_not_a_vae_train_checkpoint(tmp_path):
    checkpoint = tmp_path / "resnet.pt"
    torch.save({"state_dict": {"fc.weight": torch.zeros(2, 2)}}, checkpoint)
    result = export_checkpoint(checkpoint, tmp_path / "repo")
    assert "not a checkpoint written by vae-train" in result.detail


def test_non_checkpoint_pickle_runs_no_code(tmp_path):
    checkpoint = tmp_path / "evil.pkl"
    marker = tmp_path / "code-ran"
    checkpoint.write_bytes(pickle.dumps(Payload(marker)))
    export_checkpoint(checkpoint, tmp_path / "repo")
    assert not marker.exists()


def test_missing_checkpoint_says_so(tmp_path):
    result = export_checkpoint(tmp_path / "nope.pt", tmp_path / "repo")
    assert result.detail == f"{tmp_path / 'nope.pt'}: no such checkpoint file"


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", ".hidden", "a\\b", "", "x" * 65])
def test_bad_model_name_is_refused_naming_what_is_allowed(tmp_path, trained_runs, name):
    result = export_checkpoint(trained_runs.vae / "best.pt", tmp_path / "repo", name=name)
    assert (result.status, "use 1-64 letters, digits" in result.detail) == ("failed", True)


def test_bad_model_name_writes_nothing(tmp_path, trained_runs):
    export_checkpoint(trained_runs.vae / "best.pt", tmp_path / "repo", name="../escape")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_bad_model_name_exits_non_zero_from_the_cli(tmp_path, trained_runs):
    with contextlib.redirect_stdout(io.StringIO()):
        code = main(
            [str(trained_runs.vae / "best.pt"), "--name", "a/b", "--repository", str(tmp_path)]
        )
    assert code == 1


def test_parity_over_tolerance_fails_the_export(tmp_path, trained_runs, mnist_dir):
    result = export_checkpoint(
        trained_runs.vae / "best.pt", tmp_path, data_dir=mnist_dir, precision="fp16", tolerance=1e-7
    )
    assert result.detail.startswith("ParityError: ONNX differs from PyTorch by up to")


def test_parity_over_tolerance_leaves_no_version(tmp_path, trained_runs, mnist_dir):
    export_checkpoint(
        trained_runs.vae / "best.pt", tmp_path, data_dir=mnist_dir, precision="fp16", tolerance=1e-7
    )
    # Only the (empty) model directory the writer made; no version, no temporary directory.
    assert [p.relative_to(tmp_path) for p in tmp_path.rglob("*")] == [Path("tiny-vae-fp16")]


def test_failure_during_build_leaves_no_version_and_no_temporary(
    tmp_path, trained_runs, monkeypatch
):
    """The graphs are on disk when the injected failure hits; none of it may stay behind."""

    def fail(*args, **kwargs):
        raise ParityError("injected")

    monkeypatch.setattr("export.pipeline.check_parity", fail)
    result = export_checkpoint(trained_runs.vae / "best.pt", tmp_path)
    assert (result.status, list((tmp_path / "tiny-vae").iterdir())) == ("failed", [])


@pytest.fixture(scope="module")
def crashed_repository(tmp_path_factory, trained_runs) -> Path:
    """A repository in which vae-export was killed (os._exit, no cleanup) after writing the graphs."""
    repository = tmp_path_factory.mktemp("crashed")
    script = (
        "import os, sys, export.pipeline as p\n"
        "p.check_parity = lambda *a, **k: os._exit(9)\n"
        "from export.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    process = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            str(trained_runs.vae / "best.pt"),
            "--repository",
            str(repository),
        ],
        cwd=ROOT,
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    assert process.returncode == 9, process.stderr.decode()[-2000:]
    return repository


def test_crash_mid_export_leaves_its_graphs_only_in_a_hidden_temporary(crashed_repository):
    leftovers = list((crashed_repository / "tiny-vae").iterdir())
    assert [p.name.startswith(".tmp-export-") for p in leftovers] == [True]


def test_crash_mid_export_leaves_no_version_for_the_server(crashed_repository):
    assert list_versions(crashed_repository / "tiny-vae") == []


def test_server_loads_nothing_from_a_crashed_export(crashed_repository):
    store = ModelStore(crashed_repository, RuntimeOptions(providers=("CPUExecutionProvider",)))
    store.load_all(warm_up=False)
    assert (store.names(), store.failures) == ([], [])


def test_export_after_a_crash_takes_version_1(
    crashed_repository, trained_runs, mnist_dir, tmp_path
):
    repository = tmp_path / "repo"  # a copy: the other tests look at the crash as it was left
    shutil.copytree(crashed_repository, repository)
    result = export_checkpoint(trained_runs.vae / "best.pt", repository, data_dir=mnist_dir)
    assert (result.status, result.version) == ("exported", 1)


OLD_MODEL_JSON = {  # as the foundation's export wrote it, before precision and parity_inputs
    "name": "m",
    "version": 1,
    "kind": "vae",
    "latent_dim": 8,
    "image_shape": [1, 28, 28],
    "likelihood": "bernoulli",
}


def test_model_json_without_precision_reads_as_fp32():
    assert ModelMetadata.from_dict(OLD_MODEL_JSON).precision == "fp32"


def test_model_json_with_an_unknown_precision_is_refused_naming_the_allowed_ones():
    with pytest.raises(RepositoryError, match=r"precision 'int8' is not one of \('fp32', 'fp16'\)"):
        ModelMetadata.from_dict({**OLD_MODEL_JSON, "precision": "int8"})
