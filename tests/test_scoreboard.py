"""The scoreboard at the top of BENCHMARKS.md is current and reads the newest block of a heading; every relative link
of the README and docs/ points to a file (and heading) that exists.

benchmarks/scoreboard.py is loaded from its file: it is standard-library tooling over BENCHMARKS.md, not benchmark
code (tests import no benchmark module, tests/test_layers.py)."""
import importlib.util
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCHMARKS = REPO / "BENCHMARKS.md"
DOCS = [REPO / "README.md", BENCHMARKS, *sorted((REPO / "docs").glob("*.md"))]


def _load_scoreboard():
    spec = importlib.util.spec_from_file_location("scoreboard_under_test", REPO / "benchmarks" / "scoreboard.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


scoreboard = _load_scoreboard()

BLOCK = """## {heading}

- date: {date}T10:00:00+00:00
- machine: {machine}, x86_64, 2 cores, Linux 6.1
- commit: 0123456789ab
- command: `python -m benchmarks.bench_pipeline`
- data: /data (lymphocytosis-00000000); fold seeds {seeds}; models at threshold 0.5
- clinical (baseline): BA {clinical}, AUC 0.941±0.003
{blend}
"""
SYNTHETIC = "\n".join([
    "# Benchmarks", "", "## Scoreboard", "", scoreboard.START, "stale", scoreboard.END, "",
    BLOCK.format(heading="Whole pipeline, repeated CV", date="2026-01-01", machine="Old CPU", seeds="42, 43, 44",
                 clinical="0.800±0.010", blend="- blend (nested, threshold 0.5): BA 0.850±0.020, AUC 0.910±0.002"),
    BLOCK.format(heading="Whole pipeline, repeated CV: another heading", date="2026-01-15", machine="Other CPU",
                 seeds="42, 46", clinical="0.700±0.000", blend="- blend (equal weights, CV): BA 0.700±0.000, AUC 0.7"),
    BLOCK.format(heading="Whole pipeline, repeated CV", date="2026-02-02", machine="New CPU",
                 seeds="42, 43, 44, 45, 46", clinical="0.861±0.008",
                 blend="- blend (equal weights, CV): **BA 0.914±0.011, AUC 0.958±0.004**"),
    "## Best models", "", "- date: 2026-02-03T00:00:00+00:00", "- machine: New CPU, x86_64, 2 cores, Linux 6.1",
    "- chosen on seed 43: clinical + cnn (logits): BA 0.990±0.000", "",
    "| candidate | BA s43 | BA | AUC |", "|---|---|---|---|",
    "| clinical + cnn (pipeline's two) | 0.95 | 0.950±0.001 | 0.97 |",
    "| clinical | 0.87 | 0.866±0.006 | 0.943±0.002 |", "| clinical+encoder | 0.90 | 0.897±0.003 | 0.962±0.004 |",
    "| cnn | 0.83 | 0.829±0.026 | 0.899±0.013 |", "",
])
PIPELINE = "Whole pipeline, repeated CV"


def test_the_committed_scoreboard_is_current():
    """`python -m benchmarks.scoreboard --check` in-process: regenerate the table after appending a block."""
    diff = scoreboard.stale(BENCHMARKS.read_text(encoding="utf-8"))
    assert not diff, f"BENCHMARKS.md's scoreboard is stale: run `python -m benchmarks.scoreboard`\n{diff}"


def test_blocks_are_parsed_with_their_github_anchors():
    blocks = scoreboard.parse(SYNTHETIC)
    assert [(b.heading, b.anchor) for b in blocks] == [
        (PIPELINE, "whole-pipeline-repeated-cv"),
        (f"{PIPELINE}: another heading", "whole-pipeline-repeated-cv-another-heading"),
        (PIPELINE, "whole-pipeline-repeated-cv-1"),
        ("Best models", "best-models")]
    assert blocks[0].value("date").startswith("2026-01-01")
    assert [r.label for r in blocks[3].rows if r.table] == ["clinical + cnn (pipeline's two)", "clinical",
                                                            "clinical+encoder", "cnn"]


def test_the_last_block_of_a_heading_wins():
    blend = scoreboard.Measure("blend", PIPELINE, scoreboard.quality(*scoreboard.DEFAULT_BLEND), seeds=True)
    clinical = scoreboard.Measure("clinical", PIPELINE, scoreboard.quality(r"clinical \(baseline\)"))
    blocks = scoreboard.parse(SYNTHETIC)
    figure, block = scoreboard.current(blend, blocks)
    assert figure == "BA 0.914±0.011, AUC 0.958±0.004 (fold seeds 42-46)"  # the bold newer format, not 0.850
    assert (block.anchor, block.value("date")[:10]) == ("whole-pipeline-repeated-cv-1", "2026-02-02")
    assert scoreboard.current(clinical, blocks)[0] == "BA 0.861±0.008, AUC 0.941±0.003"
    older = scoreboard.parse(SYNTHETIC.split(f"## {PIPELINE}\n\n- date: 2026-02-02")[0])  # without the newest block
    assert scoreboard.current(blend, older)[0] == "BA 0.850±0.020, AUC 0.910±0.002 (fold seeds 42-44)"


def test_best_of_a_table_and_a_missing_measure():
    best = scoreboard.Measure("best", "Best models", scoreboard.quality(r"(?!.* \+ ).*"), best="BA")
    blocks = scoreboard.parse(SYNTHETIC)
    assert scoreboard.current(best, blocks)[0] == "clinical+encoder: BA 0.897±0.003, AUC 0.962±0.004"
    absent = scoreboard.Measure("absent", PIPELINE, scoreboard.quality("no such row"))
    with pytest.raises(scoreboard.ScoreboardError, match="absent"):
        scoreboard.current(absent, blocks)


def test_check_fails_on_a_stale_table_and_passes_once_regenerated(tmp_path, capsys):
    path = tmp_path / "BENCHMARKS.md"
    measures = (scoreboard.Measure("blend", PIPELINE, scoreboard.quality(*scoreboard.DEFAULT_BLEND)),)
    assert scoreboard.stale(SYNTHETIC, measures)
    updated = scoreboard.update(SYNTHETIC, measures)
    assert not scoreboard.stale(updated, measures)
    assert "| blend | BA 0.914±0.011, AUC 0.958±0.004 | 2026-02-02 | New CPU, x86_64, 2 cores |" in updated
    assert "[Whole pipeline, repeated CV](#whole-pipeline-repeated-cv-1)" in updated
    assert scoreboard.parse(updated) == scoreboard.parse(SYNTHETIC)  # the table is never read back as a block
    path.write_text(SYNTHETIC, encoding="utf-8")
    assert scoreboard.main(["--check", "--file", str(path)]) == 2  # the real MEASURES are not all in this text
    path.write_text(BENCHMARKS.read_text(encoding="utf-8").replace(scoreboard.END, "| stale row |\n" + scoreboard.END),
                    encoding="utf-8")
    assert scoreboard.main(["--check", "--file", str(path)]) == 1
    assert "stale row" in capsys.readouterr().err
    assert scoreboard.main(["--file", str(path)]) == 0
    assert scoreboard.main(["--check", "--file", str(path)]) == 0
    assert path.read_text(encoding="utf-8") == BENCHMARKS.read_text(encoding="utf-8")


# ----------------------------------------------------------------------------- links of the README and docs/
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _links(text: str) -> list[str]:
    """Link targets outside code blocks and code spans."""
    text = re.sub(r"^\s*```.*?^\s*```", "", text, flags=re.S | re.M)
    text = re.sub(r"`[^`]*`", "", text)
    return LINK.findall(text)


def test_the_docs_exist():
    names = {p.name for p in DOCS}
    assert {"README.md", "models.md", "bad-input.md", "studies-and-overnight.md", "predict.md", "code-layout.md",
            "benchmarks.md"} <= names


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(doc):
    """Every relative link points to an existing file; a #fragment into Markdown to one of its headings."""
    broken = []
    for target in _links(doc.read_text(encoding="utf-8")):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...
            continue
        path, _, fragment = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif fragment and file.suffix == ".md":
            anchors = {a for _, _, a in scoreboard.headings(file.read_text(encoding="utf-8"))}
            if fragment not in anchors:
                broken.append(f"{target}: no heading with that anchor in {file.name}")
    assert not broken, f"{doc.name}: " + "; ".join(broken)
