"""Foundation facts of export: ONNX pair matches PyTorch, model.json is complete, writes are atomic."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import torch

from export import cli
from export.pipeline import export_checkpoint
from server.repository import list_versions, read_metadata
from training.checkpoint import load_checkpoint, model_from_checkpoint


def test_exported_model_json_says_what_the_server_needs(repository, trained_runs):
    meta = read_metadata(repository / "tiny-vae" / "1")
    assert (meta.kind, meta.latent_dim, meta.image_shape, meta.likelihood) == (
        "vae",
        8,
        (1, 28, 28),
        "bernoulli",
    )
    assert meta.dataset == "mnist" and meta.opset == 18
    assert meta.metrics["test_elbo"] < 0 and meta.parity["decoder_max_abs_diff"] < 1e-4
    from training.checkpoint import sha256_file

    assert meta.checkpoint_sha256 == sha256_file(trained_runs.vae / "best.pt")


def test_decoder_has_a_dynamic_batch_axis_and_matches_pytorch(repository, trained_runs):
    model = model_from_checkpoint(load_checkpoint(trained_runs.vae / "best.pt"))
    session = ort.InferenceSession(str(repository / "tiny-vae" / "1" / "decoder.onnx"))
    for batch in (1, 3, 130):
        z = torch.randn(batch, 8)
        (images,) = session.run(None, {"latent": z.numpy()})
        with torch.no_grad():
            expected = model.decode(z).numpy()
        assert images.shape == (batch, 1, 28, 28)
        assert np.abs(images - expected).max() < 1e-4


def test_graphs_hold_no_random_ops(repository):
    for graph in ("encoder.onnx", "decoder.onnx"):
        ops = {n.op_type for n in onnx.load(str(repository / "tiny-vae" / "1" / graph)).graph.node}
        assert not any(op.startswith("Random") for op in ops)


def test_same_checkpoint_is_skipped_not_exported_twice(repository, trained_runs, mnist_dir):
    result = export_checkpoint(trained_runs.vae / "best.pt", repository, data_dir=mnist_dir)
    assert (result.status, result.version) == ("skipped", 1)


def test_failed_parity_leaves_no_visible_version(tmp_path, trained_runs, mnist_dir):
    result = export_checkpoint(
        trained_runs.vae / "best.pt", tmp_path, data_dir=mnist_dir, tolerance=-1
    )
    assert result.status == "failed" and "tolerance" in result.detail
    assert list_versions(tmp_path / "tiny-vae") == []
    assert [p.name for p in (tmp_path / "tiny-vae").iterdir()] == []


def test_directory_export_reports_broken_checkpoints_and_exits_non_zero(
    tmp_path, trained_runs, mnist_dir, capsys
):
    runs = tmp_path / "runs"
    (runs / "good").mkdir(parents=True)
    (runs / "good" / "best.pt").write_bytes((trained_runs.ae / "best.pt").read_bytes())
    (runs / "bad").mkdir()
    (runs / "bad" / "best.pt").write_bytes(b"not a checkpoint")
    repo = tmp_path / "repo"
    code = cli.main([str(runs), "--repository", str(repo), "--data-dir", str(mnist_dir)])
    out = capsys.readouterr().out
    assert code == 1
    assert "1 exported, 0 skipped, 1 failed" in out
    assert list_versions(repo / "tiny-ae") == [1]


def test_forced_re_export_takes_the_next_version(tmp_path, trained_runs, mnist_dir):
    for expected in (1, 2):
        result = export_checkpoint(
            trained_runs.ae / "best.pt", tmp_path, data_dir=mnist_dir, skip_existing=False
        )
        assert result.version == expected
    assert json.loads((tmp_path / "tiny-ae" / "2" / "model.json").read_text())["version"] == 2
