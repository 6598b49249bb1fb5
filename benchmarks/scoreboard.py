"""The scoreboard at the top of BENCHMARKS.md: the current figure of every tracked measure, read from the dated blocks.

Usage: python -m benchmarks.scoreboard            # rewrite the table between the scoreboard markers
       python -m benchmarks.scoreboard --check    # exit 1 (and show the difference) when the table is stale
       [--file BENCHMARKS.md]

The benchmarks append dated blocks (``## heading``, then ``- date:``, ``- machine:``, ``- commit:``, ``- command:``
and result lines or tables). MEASURES below says what is tracked: a heading pattern and, per field, which row to
read (a ``- label: text`` line or a table row, by its label) and which value in it. The rule: a measure comes from
the **last block** (newest last) whose heading matches and that reports its rows; inside a block the last row of a
label wins. The scoreboard's own table is never read back. Standard library only: it runs before the venv exists.
"""
from __future__ import annotations

import argparse
import difflib
import fcntl
import os
import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

BENCHMARKS_FILE = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"
START, END = "<!-- scoreboard:start -->", "<!-- scoreboard:end -->"
COMMAND = "python -m benchmarks.scoreboard"

BA = r"\bBA \**(\d\.\d+±\d\.\d+)"
AUC = r"\bAUC \**(\d\.\d+(?:±\d\.\d+)?)"
SECONDS = r"(\d+(?:\.\d+)? s)\b"
MINUTES = r"(\d+(?:\.\d+)? min)\b"
IMG_S = r"(\d[\d,]* img/s)"
SEEDS = r"fold seeds (\d+(?:, \d+)*)"


@dataclass(frozen=True)
class Field:
    """One value of a measure: ``label`` printed before it, the first of ``rows`` (label regexes, matched whole)
    that the block reports, and the regex (one group) that finds the value in that row's text."""
    label: str
    rows: tuple[str, ...]
    value: str


@dataclass(frozen=True)
class Measure:
    """A scoreboard line: ``heading`` (regex, matched whole) picks the blocks, ``fields`` the values.

    ``best``: the label of a field; the measure is then the table row (among those matching the first field's
    rows) with the highest value of that field, named in the figure. ``seeds``: add the block's fold seeds."""
    name: str
    heading: str
    fields: tuple[Field, ...]
    best: str | None = None
    seeds: bool = False


def quality(*rows: str) -> tuple[Field, Field]:
    """BA and AUC, each from the first of ``rows`` that reports it."""
    return Field("BA", rows, BA), Field("AUC", rows, AUC)


PIPELINE = r"Whole pipeline, repeated CV"
BLEND_RULES = r"Fixed blending rules over every subset of the models.*"
DEFAULT_BLEND = (r"blend \(equal weights, CV\)", r"blend \(equal weights, 0\.5, nothing fitted\)",
                 r"blend \(nested, threshold 0\.5\)")  # bench_pipeline's lines, newest format first
SSL_IMAGE_ONLY = r"simclr, mean head, image-only"  # bench_encoders' line of the frozen encoder's MIL head
COLD_PIPELINE = (Field("", (r"wall time, seed \d+",), r"total " + SECONDS),  # bench_pipeline --cold's lines
                 Field("peak", (r"peak memory of a stage",), r"(\d+ MB)"))
MEASURES: tuple[Measure, ...] = (
    Measure("Default pipeline: blend of its four models (equal weights at 0.5)", PIPELINE,
            quality(*DEFAULT_BLEND), seeds=True),
    Measure("Clinical model (the baseline, same folds)", PIPELINE, quality(r"clinical \(baseline\)"), seeds=True),
    Measure("Clinical + morphometry", PIPELINE, quality("morpho"), seeds=True),
    Measure("CNN-MIL, mean head (frozen ImageNet Lite0)", PIPELINE, quality("cnn"), seeds=True),
    Measure("CNN-MIL, attention head", PIPELINE, quality("cnn_attention"), seeds=True),
    Measure("Best single model (fixed-rule blend benchmark's models)", BLEND_RULES, quality(r"(?!.* \+ ).*"), best="BA"),
    Measure("Image-only CNN on the fixed-rule benchmark's SSL encoder (lymph-ssl since 2026-12-07)", BLEND_RULES,
            quality(r"ssl mean image-only"), seeds=True),
    Measure("Clinical + that encoder's pooled cells (clinical+encoder)", BLEND_RULES, quality(r"clinical\+encoder"),
            seeds=True),
    Measure("Image-only CNN on the newest encoder of the budget curve (bench_encoders, mean head)",
            r"Self-supervised encoders at .*",
            (Field("AUC", (SSL_IMAGE_ONLY,), AUC), Field("BA", (SSL_IMAGE_ONLY,), BA)), seeds=True),
    Measure("Whole-pipeline benchmark, wall time over its fold seeds", PIPELINE,
            (Field("", (r"whole benchmark",), MINUTES),), seeds=True),
    Measure("Default pipeline on the real data from empty caches, one fold seed: wall time / peak memory of a stage",
            r"Whole pipeline, cold caches", COLD_PIPELINE),
    Measure("The same with the CNNs on the shipped encoder (`--cnn-config configs/cnn_cpu_ssl.yaml`)",
            r"Whole pipeline, cold caches \(cnn_cpu_ssl\)", COLD_PIPELINE),
    Measure("Demo `./run.sh`: installed / fresh clone with install", r"Demo: README main command, fresh clone",
            (Field("installed", (r"install excluded.*",), SECONDS),
             Field("fresh clone", (r"install included.*",), SECONDS))),
    Measure("Test suite `./run_tests.sh`, best run", r"Test suite time.*",
            (Field("", (r"target .*",), r"best run " + SECONDS),)),
    Measure("Script start-up targets (`--help`, a bad option)", r"Script start-up.*",
            (Field("", ("targets",), r"(.+)"),)),
    Measure("JPEG decode (2 threads) / decoded-cache build / cache read", r"JPEG decode vs decoded cache",
            (Field("decode", (r"decode \+ centre crop, cv2, 2 threads",), IMG_S),
             Field("build", (r"build decoded cache.*",), IMG_S),
             Field("read", (r"read every bag from the cache.*",), IMG_S))),
    Measure("Content digests: first hashing / remembered / opening a warm cache", r"JPEG decode vs decoded cache",
            (Field("hash", (r"content digests \(.*",), IMG_S),
             Field("remembered", (r"content digests remembered.*",), SECONDS),
             Field("open", (r"content digests remembered.*",), r"opening the warm decoded cache[^:]*: " + SECONDS))),
)


@dataclass
class Row:
    label: str
    text: str
    table: bool = False


@dataclass
class Block:
    heading: str
    anchor: str
    rows: list[Row] = field(default_factory=list)

    def value(self, label: str) -> str:
        """The text of the first row with this label ('' if none): date, machine."""
        return next((r.text for r in self.rows if r.label == label), "")


class ScoreboardError(ValueError):
    pass


class Slugger:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to '-', repeats numbered -1, -2, ..."""

    def __init__(self):
        self.seen: dict[str, int] = {}

    def slug(self, heading: str) -> str:
        base = "".join(c for c in heading.lower() if c.isalnum() or c in "-_ ").replace(" ", "-")
        result = base
        while result in self.seen:
            self.seen[base] += 1
            result = f"{base}-{self.seen[base]}"
        self.seen[result] = 0
        return result


HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def headings(text: str) -> list[tuple[int, str, str]]:
    """(level, title, anchor) of every Markdown heading outside fenced code, in order."""
    found, slugger, fenced = [], Slugger(), False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and (m := HEADING.match(line)):
            found.append((len(m.group(1)), m.group(2), slugger.slug(m.group(2))))
    return found


def _split_region(text: str) -> tuple[str, str, str]:
    """(before, table, after) around the markers; the markers stay in before/after."""
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start:
        raise ScoreboardError(f"no '{START}' ... '{END}' markers: add them where the table belongs")
    start += len(START)
    return text[:start], text[start:end], text[end:]


def _cells(line: str) -> list[str]:
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip()[1:-1])]


def parse(text: str) -> list[Block]:
    """The dated blocks (a ``## `` heading whose lines include ``- date:``), in file order, with their anchors."""
    try:
        before, _, after = _split_region(text)
        text = before + after  # the scoreboard never reads itself
    except ScoreboardError:
        pass
    anchors = iter(headings(text))
    blocks, block, header, fenced = [], None, None, False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            continue
        if m := HEADING.match(line):
            level, title, anchor = next(anchors)
            if level <= 2:
                block = Block(title, anchor) if level == 2 else None
                blocks.append(block)
            header = None
            continue
        if block is None:
            continue
        if line.strip().startswith("|") and line.strip().endswith("|"):
            cells = _cells(line)
            if header is None:
                header = cells
            elif not all(re.fullmatch(r":?-+:?", c) for c in cells if c):
                label = cells[0].strip("*")
                text_ = ", ".join(f"{h} {c}".strip() for h, c in zip(header[1:], cells[1:]))
                block.rows.append(Row(label, text_, table=True))
            continue
        header = None
        if m := re.match(r"^\s*[-*] (.*)$", line):
            label, _, rest = m.group(1).partition(": ")
            block.rows.append(Row(label.strip().strip("*").strip(), rest))
    return [b for b in blocks if b is not None and b.value("date")]


def _find(block: Block, f: Field, rows: list[Row] | None = None) -> str | None:
    """The value of field ``f`` in ``block``: the first of its row patterns reported (the last such row wins)."""
    for pattern in f.rows:
        for row in reversed(rows if rows is not None else block.rows):
            if re.fullmatch(pattern, row.label) and (m := re.search(f.value, row.text)):
                return m.group(1).strip()
    return None


def _seeds(block: Block) -> str:
    m = re.search(SEEDS, block.value("data"))
    if not m:
        return ""
    seeds = [int(s) for s in m.group(1).split(", ")]
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        return f" (fold seeds {seeds[0]}-{seeds[-1]})"
    return f" (fold seeds {', '.join(map(str, seeds))})"


def _figure(measure: Measure, block: Block) -> str | None:
    """The measure's figure in this block, or None when the block does not report every field."""
    rows = None
    prefix = ""
    if measure.best:
        key = next(f for f in measure.fields if f.label == measure.best)
        scored = [(float(v.split("±")[0]), r) for r in block.rows if r.table
                  and re.fullmatch(measure.fields[0].rows[0], r.label) and (v := _find(block, key, [r]))]
        if not scored:
            return None
        best = max(scored, key=lambda s: s[0])[1]
        rows, prefix = [best], f"{best.label}: "
    values = [_find(block, f, rows) for f in measure.fields]
    if any(v is None for v in values):
        return None
    text = ", ".join(f"{f.label} {v}".strip() for f, v in zip(measure.fields, values))
    return prefix + text + (_seeds(block) if measure.seeds else "")


def current(measure: Measure, blocks: list[Block]) -> tuple[str, Block]:
    """(figure, block) of the last block whose heading matches and that reports the measure."""
    for block in reversed(blocks):
        if re.fullmatch(measure.heading, block.heading) and (figure := _figure(measure, block)) is not None:
            return figure, block
    raise ScoreboardError(f"measure '{measure.name}': no block matching '{measure.heading}' reports it")


def _machine(block: Block) -> str:
    """The block's machine without its OS release ('AMD EPYC, x86_64, 2 cores')."""
    parts = [p for p in block.value("machine").split(", ") if not re.match(r"(Linux|Darwin|Windows)\b", p)]
    return ", ".join(parts)


def render(text: str, measures: tuple[Measure, ...] = MEASURES) -> str:
    """The scoreboard table (with its surrounding newlines) for a BENCHMARKS.md text."""
    blocks = parse(text)
    lines = ["| measure | current figure | date | machine | from the block |", "|---|---|---|---|---|"]
    for measure in measures:
        figure, block = current(measure, blocks)
        link = f"[{block.heading}](#{block.anchor})"
        cells = [measure.name, figure, block.value("date")[:10], _machine(block), link]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n\n" + "\n".join(lines) + "\n\n"  # blank lines: the markers stay out of the table


def update(text: str, measures: tuple[Measure, ...] = MEASURES) -> str:
    """``text`` with the table between the markers regenerated."""
    before, _, after = _split_region(text)
    return before + render(text, measures) + after


def stale(text: str, measures: tuple[Measure, ...] = MEASURES) -> str:
    """'' when the committed table is current, else a unified diff of committed against regenerated."""
    committed, fresh = _split_region(text)[1], render(text, measures)
    if committed == fresh:
        return ""
    diff = difflib.unified_diff(committed.splitlines(), fresh.splitlines(), "committed", "regenerated", lineterm="")
    return "\n".join(diff)


def _write(path: Path, text: str) -> None:
    """Replace ``path`` atomically under the lock benchmarks/common.py takes to append (its folder's flock)."""
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        fresh = update(path.read_text(encoding="utf-8"))  # a block appended meanwhile is read, not lost
        with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=path.parent, delete=False,
                                         prefix=f".{path.name}.", suffix=".tmp") as tmp:
            tmp.write(fresh)
        os.chmod(tmp.name, path.stat().st_mode & 0o777)
        os.replace(tmp.name, path)
    finally:
        os.close(fd)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the table is stale; write nothing")
    parser.add_argument("--file", type=Path, default=BENCHMARKS_FILE)
    args = parser.parse_args(argv)
    try:
        text = args.file.read_text(encoding="utf-8")
        diff = stale(text)
    except (OSError, ScoreboardError) as error:
        print(f"error: {args.file}: {error}", file=sys.stderr)
        return 2
    if args.check:
        if diff:
            print(f"{args.file}: the scoreboard is stale; run `{COMMAND}`\n{diff}", file=sys.stderr)
            return 1
        print(f"{args.file}: the scoreboard is current ({len(MEASURES)} measures)")
        return 0
    if diff:
        _write(args.file, text)
        print(f"{args.file}: scoreboard rewritten ({len(MEASURES)} measures)")
    else:
        print(f"{args.file}: the scoreboard was already current ({len(MEASURES)} measures)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
