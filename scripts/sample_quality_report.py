"""The sample-quality report's helpers (reports/sample-quality/commands.sh runs them):

split-mnist <t10k folder> <out>   MNIST's 10,000 test images cut into a train split (the first
                                  8,000) and a test split (the last 2,000), as four IDX files
table <runs> <out>                every run's metrics.json "quality" -> results.json and table.md,
                                  mean and standard deviation over seeds per model and prior
grids <png folder> <out>          vae-client's N(0, I) and mixture grids side by side, per model
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
PRIORS = ("standard_normal", "mixture")
PRIOR_TITLES = {"standard_normal": "N(0, I)", "mixture": "mixture"}


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
    """Runs are named <prefix><model>-s<seed>; one row per (data set prefix, model, prior)."""
    figures: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
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
    lines = [
        "| data | model | prior | seeds | Fréchet distance | precision | recall |",
        "|---|---|---|---|---|---|---|",
    ]
    summary = {}
    for (prefix, model), values in sorted(
        figures.items(), key=lambda kv: (kv[0][0], MODELS.index(kv[0][1]))
    ):
        for prior in PRIORS:
            if f"fd_{prior}" not in values:
                continue
            cells, row = [], {}
            for metric, spec in (("fd", ".2f"), ("precision", ".3f"), ("recall", ".3f")):
                series = values[f"{metric}_{prior}"]
                mean = statistics.fmean(series)
                spread = statistics.stdev(series) if len(series) > 1 else 0.0
                row[metric] = {"mean": mean, "std": spread, "seeds": series}
                cells.append(f"{mean:{spec}} ± {spread:{spec}}")
            seeds = len(values[f"fd_{prior}"])
            data = prefix.rstrip("-") or "fashion-mnist"
            lines.append(
                f"| {data} | {model} | {PRIOR_TITLES[prior]} | {seeds} | "
                + " | ".join(cells)
                + " |"
            )
            summary[f"{data}/{model}/{prior}"] = row
        reference = values.get("fd_train_reference")
        if reference:
            summary[f"{prefix.rstrip('-') or 'fashion-mnist'}/reference"] = {
                "fd": statistics.fmean(reference),
                "precision": statistics.fmean(values["precision_train_reference"]),
                "recall": statistics.fmean(values["recall_train_reference"]),
            }
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text("\n".join(lines) + "\n")
    document = {"summary": summary, "runs": per_run}
    (out / "results.json").write_text(json.dumps(document, indent=2) + "\n")
    print("\n".join(lines))


def grids(pngs: Path, out: Path) -> None:
    """<pngs>/<model>-<prior>.png pairs -> <out>/<model>.png: N(0, I) left, mixture right, titled."""
    out.mkdir(parents=True, exist_ok=True)
    for model in MODELS:
        panels = [pngs / f"{model}-{prior}.png" for prior in PRIORS]
        if not all(p.is_file() for p in panels):
            continue
        images = [Image.open(p).convert("L") for p in panels]
        width, height, gap, title = images[0].width, images[0].height, 16, 20
        canvas = Image.new("L", (2 * width + gap, height + title), color=255)
        draw = ImageDraw.Draw(canvas)
        for i, (image, prior) in enumerate(zip(images, PRIORS, strict=True)):
            canvas.paste(image, (i * (width + gap), title))
            draw.text((i * (width + gap) + 4, 4), f"{model}: {PRIOR_TITLES[prior]}", fill=0)
        canvas.save(out / f"{model}.png")
        print(f"wrote {out / f'{model}.png'}")


def main(argv: list[str]) -> int:
    commands = {"split-mnist": split_mnist, "table": table, "grids": grids}
    if len(argv) != 3 or argv[0] not in commands:
        print(__doc__, file=sys.stderr)
        return 2
    commands[argv[0]](Path(argv[1]), Path(argv[2]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
