"""`vae-export`: turn a checkpoint, or every checkpoint under a directory, into repository versions."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from server import options as opt
from server.options import StrictParser
from server.repository import PRECISIONS
from training.cli import import_or_explain


def build_parser() -> StrictParser:
    from export.parity import DEFAULT_TOLERANCE

    parser = StrictParser(
        prog="vae-export",
        description=__doc__ + " Options in brackets also read that VAE_* variable.",
    )
    parser.add_argument("source", type=Path, help="a checkpoint file, or a directory of runs")
    parser.option(
        "--repository",
        opt.path,
        Path("model_repository"),
        "model repository to write into",
        env="VAE_REPOSITORY",
    )
    parser.option(
        "--name", opt.optional(opt.text), None, "model name", shown_default="the run's directory"
    )
    parser.option(
        "--which",
        opt.choice("best", "last"),
        "best",
        "which checkpoint of each run to export from a directory: best or last",
        env="VAE_EXPORT_WHICH",
    )
    parser.option(
        "--data-dir",
        opt.optional(opt.path),
        None,
        "where the parity check finds the data set",
        env="VAE_DATA_DIR",
    )
    parser.option(
        "--precision",
        opt.choice(*PRECISIONS),
        "fp32",
        "fp16 writes half-precision graphs (float32 inputs and outputs) as '<name>-fp16'",
        env="VAE_EXPORT_PRECISION",
    )
    parser.option(
        "--tolerance",
        opt.optional(opt.number(above=0)),
        None,
        "largest allowed |ONNX - PyTorch|",
        shown_default=", ".join(f"{k} {v:g}" for k, v in DEFAULT_TOLERANCE.items()),
    )
    parser.option("--parity-batch", opt.integer(1), 64, "images in the parity check")
    parser.switch("--force", False, "export even if the sha256 is already there")
    return parser


def _reason(result: Any) -> str:
    """The row's detail on one line, without the checkpoint path the row already shows."""
    return " ".join(str(result.detail).removeprefix(f"{result.checkpoint}: ").split())


def print_table(results: list[Any]) -> None:
    """One row per export.ExportResult: status, model, version, largest |diff|, checkpoint."""
    rows = [("status", "model", "version", "max |diff|", "checkpoint / detail")]
    for r in results:
        diff = max(r.parity.get("encoder_max_abs_diff", 0), r.parity.get("decoder_max_abs_diff", 0))
        rows.append(
            (
                r.status,
                r.name,
                str(r.version or "-"),
                f"{diff:.2e}" if r.parity else "-",
                f"{r.checkpoint}" + (f"  ({_reason(r)})" if r.detail else ""),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print(
            "  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths, strict=True))
            + "  "
            + row[4]
        )


def main(argv: list[str] | None = None) -> int:
    return import_or_explain("vae-export", lambda: _export(argv))


def _export(argv: list[str] | None) -> int:
    from export.pipeline import export_checkpoint, find_checkpoints

    args = build_parser().parse_args(argv)
    if args.source.is_dir():
        if args.name is not None:
            print("vae-export: --name applies to one checkpoint, not a directory", file=sys.stderr)
            return 2
        checkpoints = find_checkpoints(args.source, args.which)
        if not checkpoints:
            print(f"vae-export: no {args.which}.pt under {args.source}", file=sys.stderr)
            return 2
    else:
        checkpoints = [args.source]
    results = []
    for checkpoint in checkpoints:
        result = export_checkpoint(
            checkpoint,
            args.repository,
            args.name,
            args.data_dir,
            args.tolerance,
            args.parity_batch,
            skip_existing=not args.force,
            precision=args.precision,
        )
        results.append(result)
    print_table(results)
    failed = [r for r in results if r.status == "failed"]
    exported = sum(r.status == "exported" for r in results)
    skipped = sum(r.status == "skipped" for r in results)
    print(f"{exported} exported, {skipped} skipped, {len(failed)} failed -> {args.repository}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
