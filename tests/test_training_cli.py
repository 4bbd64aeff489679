"""`vae-train`: YAML configs, environment and flags merge in order; bad fields fail clearly."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
import torch

from tests.conftest import CELEBA_SAMPLE
from training.batching import LoaderBatches, loader_workers
from training.cli import ConfigError, build_parser, parse_config
from training.images import ImageFiles
from training.models import build_model

CONFIGS_DIR = Path(__file__).resolve().parent.parent / "configs"
CONFIGS = sorted(CONFIGS_DIR.glob("*.yaml"))


def parse(*argv: str):
    return parse_config(list(argv))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_config_builds_its_model(path: Path) -> None:
    config = parse("--config", str(path))
    assert build_model(config.model).config.architecture == config.model.architecture


def test_every_model_family_has_a_shipped_config() -> None:
    families = {
        (parse("--config", str(p)).model.architecture, parse("--config", str(p)).model.kind)
        for p in CONFIGS
    }
    expected = {
        ("mlp", "vae"),
        ("mlp", "ae"),
        ("mlp", "cvae"),
        ("conv", "vae"),
        ("conv", "cvae"),
        ("face", "vae"),
    }
    assert expected <= families


def test_flag_overrides_yaml(tmp_path: Path) -> None:
    config = parse("--config", str(CONFIGS[0]), "--epochs", "2", "--latent-dim", "3")
    assert (config.epochs, config.model.latent_dim) == (2, 3)


def test_environment_sits_between_yaml_and_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAE_EPOCHS", "7")
    monkeypatch.setenv("VAE_BATCH_SIZE", "32")
    config = parse("--config", str(CONFIGS[0]), "--batch-size", "16")
    assert (config.epochs, config.batch_size) == (7, 16)


def test_bare_boolean_flag_means_true() -> None:
    assert parse("--resume").resume is True


def test_tuple_field_takes_several_values() -> None:
    assert parse("--hidden-dims", "32", "64", "128").model.hidden_dims == (32, 64, 128)


def test_unknown_yaml_field_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("epochz: 3\n")
    with pytest.raises(ConfigError, match="epochz"):
        parse("--config", str(path))


def test_wrongly_typed_yaml_value_names_field_and_type(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("epochs: many\n")
    with pytest.raises(ConfigError, match=r"field 'epochs' = 'many': expected an integer"):
        parse("--config", str(path))


def test_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml does not exist"):
        parse("--config", str(tmp_path / "nope.yaml"))


def test_malformed_yaml_is_refused_on_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("epochs: [\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml is not valid YAML") as refused:
        parse("--config", str(path))
    assert "\n" not in str(refused.value)


def test_yaml_boolean_must_be_a_boolean_word(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("amp: ture\n")
    with pytest.raises(ConfigError, match="field 'amp' = 'ture': expected a boolean"):
        parse("--config", str(path))


def test_a_flag_set_to_the_default_still_overrides_yaml(tmp_path: Path) -> None:
    path = tmp_path / "short.yaml"
    path.write_text("epochs: 3\nmodel:\n  latent_dim: 4\n")
    config = parse("--config", str(path), "--epochs", "10")
    assert (config.epochs, config.model.latent_dim) == (10, 4)


def test_the_config_file_may_come_from_its_variable(monkeypatch, tmp_path: Path) -> None:
    path = tmp_path / "short.yaml"
    path.write_text("epochs: 3\n")
    monkeypatch.setenv("VAE_CONFIG", str(path))
    assert parse().epochs == 3


def test_yaml_lists_and_booleans_convert_like_flags(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("amp: yes\nprior_candidates: [1, 2]\nmodel:\n  hidden_dims: [16, 8]\n")
    config = parse("--config", str(path))
    assert (config.amp, config.prior_candidates, config.model.hidden_dims) == (
        True,
        (1, 2),
        (16, 8),
    )


def test_help_says_what_each_field_is_from_the_code(capsys) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "weight of the KL term; 1 is the ELBO" in out and "[VAE_BETA]" in out


def test_the_face_config_asks_for_no_more_loader_workers_than_cores() -> None:
    config = parse("--config", str(CONFIGS_DIR / "face-vae.yaml"))
    assert 1 <= loader_workers(config.num_workers) <= len(os.sched_getaffinity(0))


def test_loading_face_images_with_the_default_workers_prints_no_warning() -> None:
    files = ImageFiles(sorted(CELEBA_SAMPLE.glob("*.jpg"))[:8])
    workers = loader_workers(parse("--config", str(CONFIGS_DIR / "face-vae.yaml")).num_workers)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's "suggested max number of worker" is a UserWarning
        batches = LoaderBatches(files, 4, True, torch.device("cpu"), num_workers=workers)
        images, _ = next(iter(batches.epoch(1)))
    assert tuple(images.shape) == (4, 3, 64, 64)


def test_a_worker_count_below_minus_one_is_refused() -> None:
    with pytest.raises(ValueError, match="num_workers -2: use -1"):
        loader_workers(-2)


def test_vae_train_ends_with_a_short_summary_and_leaves_the_json_in_the_run(
    tmp_path: Path, mnist_dir: Path, capsys
) -> None:
    from training.cli import main as vae_train

    run_dir = tmp_path / "run"
    argv = [
        "--dataset", "mnist", "--data-dir", str(mnist_dir), "--run-dir", str(run_dir),
        "--epochs", "1", "--train-subset", "500", "--val-size", "200", "--max-steps", "5",
        "--hidden-dims", "32", "--latent-dim", "4", "--iwae-samples", "5", "--iwae-images", "50",
        "--prior-components", "2", "--progress", "false", "--tensorboard", "false",
        "--figures", "false", "--threads", "1",
    ]  # fmt: skip
    assert vae_train(argv) == 0
    out = capsys.readouterr().out
    summary = out[out.index("done:") :].splitlines()
    assert len(summary) <= 6 and not any(line.lstrip().startswith(("{", '"')) for line in summary)
    text = "\n".join(summary)
    assert "test ELBO" in text and "reconstruction" in text and "KL" in text
    assert str(run_dir / "best.pt") in text and str(run_dir / "metrics.json") in text
    metrics = __import__("json").loads((run_dir / "metrics.json").read_text())
    assert {"test_elbo", "test_iwae_nll", "prior", "steps"} <= set(metrics)
