"""Summarise a py-spy raw (collapsed-stack) profile: the share of samples in each function, self and total.

Usage: python benchmarks/profile_summary.py profile.raw [--top 25]
py-spy's raw format is one line per distinct stack, `frame;frame;...;frame count`, outermost first.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

# py-spy writes "function (file.py:line)"; the line number differs per call site, so drop it.
_LINE = re.compile(r":\d+\)$")


def _frame(text: str) -> str:
    return _LINE.sub(")", text.strip())


def summarise(path: Path) -> tuple[int, Counter[str], Counter[str]]:
    total = 0
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = [_frame(f) for f in stack.split(";")]
        # The first frame is the thread ("process 123:\"python\"" or a thread name): skip it.
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    return total, own, inclusive


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    total, own, inclusive = summarise(args.profile)
    print(f"{total} samples (threads busy in Python or native code)")
    for title, counter in (("self", own), ("total (inclusive)", inclusive)):
        print(f"\n| {title} % | function |\n| ---: | --- |")
        for frame, count in counter.most_common(args.top):
            print(f"| {100.0 * count / total:5.1f} | `{frame}` |")


if __name__ == "__main__":
    main()
