"""The sample-quality report's helpers (reports/sample-quality/commands.sh runs them):

split-mnist <t10k folder> <out>   MNIST's 10,000 test images cut into a train split (the first
                                  8,000) and a test split (the last 2,000), as four IDX files
table <runs> <out>                every run's metrics.json "quality" -> results.json and table.md,
                                  mean and standard deviation over training seeds per model, prior
                                  and temperature, and each run's recommended prior
samples <repository> <out>        64 images per prior of each model's newest version, drawn as
                                  vae-serve draws them (server/dataplane/latent_space.py for N(0, I) and the mixture,
                                  export/prior_export.py's reference sampler for the two-stage prior)
                                  and decoded by its decoder.onnx: <out>/<model>-<panel>.png
grids <png folder> <out>          those PNGs side by side, per model
cvae-priors <run> <out.json>      a conditional run's pooled mixture against one mixture per
                                  class, scored like vae-train quality
aggregate <run> <out.json>        the ceiling of any prior that matches the aggregate posterior:
                                  decoded draws z ~ q(z | x) (and the means) of 10,000 training
                                  images, scored like vae-train quality
"""

from __future__ import annotations

import gzip
import json
import re
import statistics
import struct
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

MODELS = ("mlp-vae", "conv-vae", "beta-vae", "mlp-ae")
# "means" is the mixture fitted to the posterior means alone, scored as a comparison.
PRIORS = ("standard_normal", "means", "mixture", "two_stage")
PRIOR_TITLES = {
    "standard_normal": "N(0, I)",
    "means": "mixture of the means (old)",
    "mixture": "aggregate-posterior mixture",
    "two_stage": "two-stage",
}
PANELS = ("standard_normal", "mixture", "two_stage", "recommended")
FIGURE = re.compile(r"^fd_(" + "|".join(PRIORS) + r")(?:_t([0-9.]+))?$")


def _read_idx(path: Path) -> tuple[bytes, np.ndarray]:
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return data[:4], np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _write_idx(path: Path, magic: bytes, array: np.ndarray) -> None:
    header = magic + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.tobytes())


def split_mnist(source: Path, out: Path, train_rows: int = 8000) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for kind in ("images-idx3", "labels-idx1"):
        magic, array = _read_idx(source / f"t10k-{kind}-ubyte.gz")
        _write_idx(out / f"train-{kind}-ubyte.gz", magic, array[:train_rows])
        _write_idx(out / f"t10k-{kind}-ubyte.gz", magic, array[train_rows:])
    print(f"{out}: train = t10k[:{train_rows}], test = t10k[{train_rows}:]")


def table(runs: Path, out: Path) -> None:
    """Runs are named <prefix><model>-s<seed>; one row per (data set, model, prior, temperature)."""
    figures: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    recommended: dict[tuple[str, str], list[str]] = defaultdict(list)
    per_run = {}
    for metrics_file in sorted(runs.glob("*/metrics.json")):
        match = re.fullmatch(r"(.*?)(" + "|".join(MODELS) + r")-s(\d+)", metrics_file.parent.name)
        quality = json.loads(metrics_file.read_text()).get("quality")
        if match is None or quality is None:
            continue
        prefix, model, _ = match.groups()
        per_run[metrics_file.parent.name] = quality
        for key, value in quality.items():
            if isinstance(value, (int, float)):
                figures[(prefix, model)][key].append(float(value))
        if quality.get("recommended"):
            chosen = quality["recommended"]
            recommended[(prefix, model)].append(f"{chosen['prior']}@{chosen['temperature']:g}")
    lines = [
        "| data | model | prior | temperature | seeds | Fréchet distance | precision | recall |",
        "|---|---|---|---|---|---|---|---|",
    ]
    summary: dict = {}
    for (prefix, model), values in sorted(
        figures.items(), key=lambda kv: (kv[0][0], MODELS.index(kv[0][1]))
    ):
        data = prefix.rstrip("-") or "fashion-mnist"
        rows = sorted(
            (PRIORS.index(m[1]), float(m[2] or 1.0), m[1], key)
            for key in values
            if (m := FIGURE.match(key))
        )
        for _, temperature, prior, key in rows:
            suffix = key.removeprefix(f"fd_{prior}")
            cells, row = [], {}
            for metric, spec in (("fd", ".2f"), ("precision", ".3f"), ("recall", ".3f")):
                series = values[f"{metric}_{prior}{suffix}"]
                mean = statistics.fmean(series)
                spread = statistics.stdev(series) if len(series) > 1 else 0.0
                row[metric] = {"mean": mean, "std": spread, "seeds": series}
                cells.append(f"{mean:{spec}} ± {spread:{spec}}")
            lines.append(
                f"| {data} | {model} | {PRIOR_TITLES[prior]} | {temperature:g} | "
                f"{len(values[key])} | " + " | ".join(cells) + " |"
            )
            summary[f"{data}/{model}/{prior}/t{temperature:g}"] = row
        summary[f"{data}/{model}/recommended"] = recommended[(prefix, model)]
        reference = values.get("fd_train_reference")
        if reference:
            summary[f"{data}/reference"] = {
                "fd": statistics.fmean(reference),
                "precision": statistics.fmean(values["precision_train_reference"]),
                "recall": statistics.fmean(values["recall_train_reference"]),
            }
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text("\n".join(lines) + "\n")
    target_lines = targets(per_run)
    (out / "targets.md").write_text("\n".join(target_lines) + "\n")
    document = {"summary": summary, "runs": per_run}
    (out / "results.json").write_text(json.dumps(document, indent=2) + "\n")
    print("\n".join(lines))
    print("\n".join(target_lines))


def _mean_spread(series: list[float], spec: str) -> str:
    spread = statistics.stdev(series) if len(series) > 1 else 0.0
    return f"{statistics.fmean(series):{spec}} ± {spread:{spec.lstrip('+')}}"


def targets(per_run: dict[str, dict]) -> list[str]:
    """Issue #20's targets per VAE, per seed then as mean ± spread: the recommended prior's Fréchet
    distance over N(0, I)'s (at most 0.5), its recall over N(0, I)'s (at least 0.8), its precision
    minus N(0, I)'s (at least 0); and the two-stage prior's Fréchet distance over the mixture's
    (at most 1), at temperature 1 and each at its best qualifying temperature."""
    lines = [
        "| model | seeds | recommended (per seed) | FD / N(0, I) FD (<= 0.5) | recall / N(0, I) "
        "recall (>= 0.8) | precision - N(0, I) precision (>= 0) | two-stage FD / mixture FD, "
        "T = 1 | the same, each at its best qualifying T |",
        "|---|---|---|---|---|---|---|---|",
    ]
    by_model: dict[str, list[dict]] = defaultdict(list)
    for name, quality in sorted(per_run.items()):
        match = re.fullmatch(r"(" + "|".join(MODELS) + r")-s(\d+)", name)
        if match and match[1] != "mlp-ae" and quality.get("recommended"):
            by_model[match[1]].append(quality)
    for model in MODELS:
        runs = by_model.get(model)
        if not runs:
            continue
        fd, recall, precision, two_vs_mix, best_vs_best, chosen = [], [], [], [], [], []
        for quality in runs:
            pick = quality["recommended"]
            chosen.append(f"{pick['prior']}@{pick['temperature']:g}")
            fd.append(pick["fd"] / quality["fd_standard_normal"])
            recall.append(pick["recall"] / quality["recall_standard_normal"])
            precision.append(pick["precision"] - quality["precision_standard_normal"])
            if "fd_two_stage" in quality:
                two_vs_mix.append(quality["fd_two_stage"] / quality["fd_mixture"])
                best = {
                    prior: min(
                        (
                            c["fd"]
                            for c in pick["candidates"]
                            if c["prior"] == prior and c["qualifies"]
                        ),
                        default=float("nan"),
                    )
                    for prior in ("two_stage", "mixture")
                }
                best_vs_best.append(best["two_stage"] / best["mixture"])
        lines.append(
            f"| {model} | {len(runs)} | {', '.join(chosen)} | {_mean_spread(fd, '.3f')} | "
            f"{_mean_spread(recall, '.3f')} | {_mean_spread(precision, '+.3f')} | "
            f"{_mean_spread(two_vs_mix, '.3f') if two_vs_mix else '-'} | "
            f"{_mean_spread(best_vs_best, '.3f') if best_vs_best else '-'} |"
        )
    return lines


def samples(repository: Path, out: Path, count: int = 64, seed: int = 0) -> None:
    """<out>/<model>-<panel>.png for each prior of each model's newest version at temperature 1,
    and its recommended prior at the recommended temperature, as vae-serve would draw them."""
    import onnxruntime as ort

    from export.prior_export import reference_two_stage_sample
    from server.codecs import grid_png
    from server.dataplane.latent_space import draw_latents, prior_generator
    from server.repository import (
        PRIOR_DECODER_FILE,
        list_models,
        list_versions,
        read_metadata,
        read_mixture,
    )

    out.mkdir(parents=True, exist_ok=True)
    for name in list_models(repository):
        directory = repository / name / str(max(list_versions(repository / name)))
        meta = read_metadata(directory)
        mixture = read_mixture(directory, meta)
        decoder = ort.InferenceSession(
            str(directory / "decoder.onnx"), providers=["CPUExecutionProvider"]
        )
        panels = {prior: (prior, 1.0) for prior in meta.priors}
        if meta.recommended_prior:
            panels["recommended"] = (meta.recommended_prior, meta.recommended_temperature)
        for panel, (prior, temperature) in panels.items():
            if prior == "two_stage":
                latents = reference_two_stage_sample(
                    directory / PRIOR_DECODER_FILE, count, seed, temperature
                )
            else:
                latents = draw_latents(
                    prior_generator(seed), count, meta.latent_dim, temperature,
                    mixture if prior == "mixture" else None,
                )  # fmt: skip
            (images,) = decoder.run(None, {"latent": latents})
            images = images.repeat(2, axis=2).repeat(2, axis=3)  # as vae-client --scale 2
            (out / f"{name}-{panel}.png").write_bytes(grid_png(images, 8))
            label = f"{prior} at temperature {temperature:g}"
            (out / f"{name}-{panel}.txt").write_text(label + "\n")
        print(f"{name}: {', '.join(panels)}")


def grids(pngs: Path, out: Path) -> None:
    """<pngs>/<model>-<panel>.png -> <out>/<model>.png: N(0, I), the mixture, the two-stage prior
    (temperature 1) and the recommended prior, left to right, titled."""
    out.mkdir(parents=True, exist_ok=True)
    for model in MODELS:
        panels = [p for p in PANELS if (pngs / f"{model}-{p}.png").is_file()]
        if not panels:
            continue
        images = [Image.open(pngs / f"{model}-{p}.png").convert("L") for p in panels]
        width, height, gap, title = images[0].width, images[0].height, 16, 20
        canvas = Image.new("L", (len(images) * (width + gap) - gap, height + title), color=255)
        draw = ImageDraw.Draw(canvas)
        for i, (image, panel) in enumerate(zip(images, panels, strict=True)):
            canvas.paste(image, (i * (width + gap), title))
            if panel == "recommended":
                text = "recommended: " + (pngs / f"{model}-{panel}.txt").read_text().strip()
            else:
                text = f"{PRIOR_TITLES[panel]}, temperature 1"
            draw.text((i * (width + gap) + 4, 4), text.replace("_", "-"), fill=0)
        canvas.save(out / f"{model}.png")
        print(f"wrote {out / f'{model}.png'}")


def cvae_priors(run: Path, out: Path, samples: int = 10_000, seeds: tuple = (0, 1, 2)) -> None:
    """A CVAE's codes, pooled over classes (one mixture: what a version ships) or per class (one
    mixture for each label's codes, sampled with that label): Fréchet distance, precision, recall
    at temperatures 1 and 1.5, means over the sampling seeds. Images are generated class-balanced
    (label i % K for image i, as vae-train quality does), so both compare like with like."""
    import torch

    from training.checkpoint import load_checkpoint, model_from_checkpoint
    from training.classifier import default_path, load_classifier
    from training.codes import load_run, posterior_codes
    from training.data import load_idx_split
    from training.prior import fit_codes_prior, sample_mixture
    from training.quality import generate, scores, standard_normal_latents

    checkpoint, config, data = load_run(run, "best", None, "cpu")
    model = model_from_checkpoint(load_checkpoint(checkpoint))
    classes = model.config.num_classes
    if not classes:
        raise SystemExit(f"{run} is not a conditional model")
    train, val = data.train.data, data.val.data

    def codes_of(split, rows):
        return posterior_codes(model, [(split.images[rows], split.labels[rows])])

    every = torch.arange(len(train))
    pooled = fit_codes_prior(codes_of(train, every), codes_of(val, torch.arange(len(val))))
    per_class = [
        fit_codes_prior(
            codes_of(train, (train.labels == c).nonzero().squeeze(1)),
            codes_of(val, (val.labels == c).nonzero().squeeze(1)),
        )
        for c in range(classes)
    ]
    arrays = [{"weights": m.weights, "means": m.means, "scale_tril": m.scale_tril}
              for m in (pooled, *per_class)]  # fmt: skip
    labels = np.arange(samples) % classes

    def per_class_latents(seed: int, temperature: float) -> np.ndarray:
        z = np.empty((samples, model.config.latent_dim), np.float32)
        for c in range(classes):
            rows = labels == c
            z[rows] = sample_mixture(arrays[1 + c], int(rows.sum()), seed + 1000 * c, temperature)
        return z

    samplers = {
        "standard_normal": lambda seed, t: standard_normal_latents(
            samples, model.config.latent_dim, seed, t
        ),
        "pooled_mixture": lambda seed, t: sample_mixture(arrays[0], samples, seed, t),
        "per_class_mixture": per_class_latents,
    }
    classifier = load_classifier(default_path(config.dataset), config.dataset)
    real = classifier.features(load_idx_split(config.dataset, "test", None).images[:samples])
    figures: dict = {"run": str(run), "samples": samples, "seeds": list(seeds)}
    for name, sampler in samplers.items():
        for temperature in (1.0, 1.5):
            runs = [
                scores(
                    real, classifier.features(generate(model, sampler(seed, temperature), classes))
                )
                for seed in seeds
            ]
            figures[f"{name}@{temperature:g}"] = {
                metric: statistics.fmean(r[metric] for r in runs) for metric in runs[0]
            }
            print(name, temperature, figures[f"{name}@{temperature:g}"], flush=True)
    figures["pooled_heldout_log_likelihood"] = pooled.heldout_log_likelihood
    figures["per_class_heldout_log_likelihood"] = [m.heldout_log_likelihood for m in per_class]
    out.write_text(json.dumps(figures, indent=2) + "\n")


def aggregate(run: Path, out: Path, samples: int = 10_000, seeds: tuple = (0, 1, 2)) -> None:
    """Decode z ~ q(z | x) of `samples` training images drawn at random (and their posterior means)
    and score them as vae-train quality scores a prior: what a perfect model of the aggregate
    posterior would get at temperature 1."""
    from training.checkpoint import load_checkpoint, model_from_checkpoint
    from training.classifier import default_path, load_classifier
    from training.codes import load_run, split_codes
    from training.data import load_idx_split
    from training.quality import generate, scores

    checkpoint, config, data = load_run(run, "best", None, "cpu")
    model = model_from_checkpoint(load_checkpoint(checkpoint))
    codes, _ = split_codes(model, data)
    classifier = load_classifier(default_path(config.dataset), config.dataset)
    real = classifier.features(load_idx_split(config.dataset, "test", None).images[:samples])
    figures: dict = {"run": str(run), "samples": samples, "seeds": list(seeds)}
    for name in ("draws", "means"):
        runs = []
        for seed in seeds:
            rng = np.random.default_rng(seed)
            chosen = codes.subset(rng.choice(len(codes), samples, replace=False))
            z = chosen.draws(1, rng) if name == "draws" else chosen.means
            images = generate(model, z.astype(np.float32), model.config.num_classes)
            runs.append(scores(real, classifier.features(images)))
        figures[name] = {m: statistics.fmean(r[m] for r in runs) for m in runs[0]}
        print(name, figures[name], flush=True)
    out.write_text(json.dumps(figures, indent=2) + "\n")


def main(argv: list[str]) -> int:
    commands = {
        "split-mnist": split_mnist,
        "table": table,
        "samples": samples,
        "grids": grids,
        "cvae-priors": cvae_priors,
        "aggregate": aggregate,
    }
    if len(argv) != 3 or argv[0] not in commands:
        print(__doc__, file=sys.stderr)
        return 2
    commands[argv[0]](Path(argv[1]), Path(argv[2]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
