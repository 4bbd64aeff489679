"""What the training loop reports: the progress bar, each epoch's record (train, validation and test
terms) in the JSON-lines log, TensorBoard and the console, and the final summary with the IWAE bound
and the figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from training import figures
from training.evaluation import evaluate, iwae_nll


def progress_bar(config, ranks, steps_per_epoch: int, epoch: int):
    if not (config.progress and ranks.is_main):
        return None
    from tqdm import tqdm

    # disable=None: drawn on a terminal only, so logs of batch jobs stay free of bar frames.
    return tqdm(total=steps_per_epoch, desc=f"epoch {epoch}", leave=False, disable=None)


def epoch_record(model, data, likelihood, epoch, step, seconds, train_terms) -> dict[str, Any]:
    val_terms = evaluate(model, data.val.epoch(), likelihood) if data.val is not None else {}
    test_terms = evaluate(model, data.test.epoch(), likelihood)
    return {
        "epoch": epoch,
        "step": step,
        "epoch_seconds": round(seconds, 3),
        **{f"train_{k}": v for k, v in train_terms.items()},
        **{f"val_{k}": v for k, v in val_terms.items()},
        **({"val_elbo": -val_terms["loss"]} if val_terms else {}),
        **{f"test_{k}": v for k, v in test_terms.items()},
        "test_elbo": -test_terms["loss"],
    }


def log_epoch(record: dict[str, Any], log_file, writer) -> None:
    log_file.write(json.dumps(record) + "\n")
    log_file.flush()
    if writer is not None:
        for key, value in record.items():
            if key not in ("epoch", "step"):
                writer.add_scalar(key.replace("_", "/", 1), value, record["epoch"])
        writer.flush()
    print(
        f"epoch {record['epoch']:3d}  train loss {record['train_loss']:.2f}  "
        f"test loss {record['test_loss']:.2f} (recon {record['test_reconstruction']:.2f}, "
        f"KL {record['test_kl']:.2f})  beta {record['kl_weight']:.2f}  "
        f"{record['epoch_seconds']:.1f}s",
        flush=True,
    )


def finish(config, model, data, history, run_dir: Path, step: int, ranks) -> dict[str, Any]:
    """The final summary: last epoch's figures, the IWAE bound, and the pictures."""
    summary: dict[str, Any] = {"run_dir": str(run_dir), "epochs": len(history), "steps": step}
    summary["world_size"] = ranks.world_size
    summary.update(history[-1] if history else {})
    bernoulli_vae = model.variational and model.config.likelihood == "bernoulli"
    if config.iwae_samples > 0 and bernoulli_vae:
        nll = iwae_nll(model, data.test.epoch(), config.iwae_samples, config.iwae_images)
        summary.update(test_iwae_nll=nll, iwae_samples=config.iwae_samples)
    if config.figures:
        summary["figures"] = figures.save_all(
            model, data.figure_images, data.figure_labels, data.class_names, history, run_dir
        )
    (run_dir / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
