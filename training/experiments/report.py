"""A study's outputs: results.json with every figure and README.md with the table and the plots."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Column = tuple[str, str, str]  # (figure key, header, format spec such as ".2f")


@dataclass
class StudyResult:
    """What a study measured: one row of figures per trained model, and the plots it drew."""

    study: str
    title: str
    rows: list[dict[str, Any]]
    columns: Sequence[Column]
    plots: list[str]
    notes: list[str] = field(default_factory=list)  # how to read the figures


def _cell(value: Any, spec: str) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return format(value, spec) if math.isfinite(value) else str(value)
    return str(value)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[Column]) -> str:
    lines = [
        "| " + " | ".join(header for _, header, _ in columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(k), spec) for k, _, spec in columns) + " |")
    return "\n".join(lines)


def write_report(
    result: StudyResult, folder: Path, command: str, settings: dict[str, Any], seconds: float
) -> Path:
    """Write results.json and README.md into `folder` (the plots are already there)."""
    folder.mkdir(parents=True, exist_ok=True)
    document = {
        "study": result.study,
        "command": command,
        "settings": settings,
        "seconds": round(seconds, 1),
        "rows": result.rows,
        "plots": result.plots,
    }
    (folder / "results.json").write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    mode = "quick mode" if settings.get("quick") else "full mode"
    subset = settings.get("train_subset") or "all"
    lines = [
        f"# {result.title}",
        "",
        f"Measured by `{command}` ({mode}: {settings['dataset']}, {settings['epochs']} epochs, "
        f"training images: {subset}, MLP hidden {settings['hidden_dims']}); the study took "
        f"{seconds:.0f} s. Test-set figures in nats per image unless a column says otherwise.",
        "",
        markdown_table(result.rows, result.columns),
        "",
        *[f"- {note}" for note in result.notes],
        "",
        *[f"![{name}]({name})" for name in result.plots],
        "",
    ]
    (folder / "README.md").write_text("\n".join(lines), encoding="utf-8")
    return folder
