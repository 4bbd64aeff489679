"""`vae-export`: turn a checkpoint, or every checkpoint under a directory, into repository versions."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from export.parity import DEFAULT_TOLERANCE
from export.pipeline import ExportResult, export_checkpoint, find_checkpoints
from server.repository import PRECISIONS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vae-export", description=__doc__)
    parser.add_argument("source", type=Path, help="a checkpoint file, or a directory of runs")
    parser.add_argument(
        "--repository",
        type=Path,
        default=Path(os.environ.get("VAE_REPOSITORY", "model_repository")),
        help="model repository to write into [VAE_REPOSITORY]",
    )
    parser.add_argument(
        "--name", default=None, help="model name (default: the run's directory name)"
    )
    parser.add_argument(
        "--which",
        choices=("best", "last"),
        default=os.environ.get("VAE_EXPORT_WHICH", "best"),
        help="which checkpoint of each run to export from a directory [VAE_EXPORT_WHICH]",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ["VAE_DATA_DIR"]) if "VAE_DATA_DIR" in os.environ else None,
        help="where the parity check finds the data set [VAE_DATA_DIR]",
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=os.environ.get("VAE_EXPORT_PRECISION", "fp32"),
        help="fp16 writes half-precision graphs (float32 inputs and outputs) as '<name>-fp16' "
        "[VAE_EXPORT_PRECISION]",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=None,
        help="largest allowed |ONNX - PyTorch| (default: "
        + ", ".join(f"{k} {v:g}" for k, v in DEFAULT_TOLERANCE.items())
        + ")",
    )
    parser.add_argument("--parity-batch", type=int, default=64, help="images in the parity check")
    parser.add_argument(
        "--force", action="store_true", help="export even if the sha256 is already there"
    )
    return parser


def print_table(results: list[ExportResult]) -> None:
    rows = [("status", "model", "version", "max |diff|", "checkpoint / detail")]
    for r in results:
        diff = max(r.parity.get("encoder_max_abs_diff", 0), r.parity.get("decoder_max_abs_diff", 0))
        rows.append(
            (
                r.status,
                r.name,
                str(r.version or "-"),
                f"{diff:.2e}" if r.parity else "-",
                f"{r.checkpoint}" + (f"  ({r.detail})" if r.detail else ""),
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
    args = build_parser().parse_args(argv)
    if args.parity_batch < 1:
        print(
            f"vae-export: --parity-batch must be at least 1, got {args.parity_batch}",
            file=sys.stderr,
        )
        return 2
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
