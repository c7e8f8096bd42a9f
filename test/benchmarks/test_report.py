"""benchmarks/report.py: the pages' generated tables agree with the results they are generated from.

The repository's pages pass `--check`; a number changed in a copy of the results fails it naming the page and
block; an unknown block id, an unclosed block and a generator used nowhere fail it; every file a generator
reads exists; every results table ends with its provenance line; the write mode repairs a hand-edited block.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import report

RESULTS = REPO / "benchmarks" / "results"
PROVENANCE_PARTS = ("command `", "; code ", "; model: ", "; data: ", "; machine: ", "; date: ")


def block(block_id: str, body: str = "") -> str:
    return f"{report.START.format(id=block_id)}\n{body}{report.END.format(id=block_id)}\n"


@pytest.fixture(scope="module")
def results_copy(tmp_path_factory) -> Path:
    """A copy of benchmarks/results/ (JSON only) that a test may change."""
    dst = tmp_path_factory.mktemp("results")
    for path in RESULTS.rglob("*.json"):
        target = dst / path.relative_to(RESULTS)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    return dst


def test_check_passes_on_the_repository():
    assert report.run(REPO, RESULTS, check=True) == []


def test_a_changed_number_in_a_results_json_fails_the_check_naming_page_and_block(results_copy):
    path = results_copy / "bench_cpu_small.json"
    data = json.loads(path.read_text())
    data["latency_ms_median"] += 10.0
    path.write_text(json.dumps(data))
    baseline = set(report.run(REPO, RESULTS, check=True))
    changed = set(report.run(REPO, results_copy, check=True)) - baseline
    assert "docs/results/cpu.md: block cpu:inference differs from its generator (run python benchmarks/report.py)" \
        in changed
    assert "README.md: block headline differs from its generator (run python benchmarks/report.py)" in changed
    assert all("cpu:inference" in p or "headline" in p for p in changed), changed


def test_the_command_line_check_exits_1_and_names_the_block(results_copy, tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "page.md").write_text("# A page\n\n" + block("cpu:lookup_accuracy", "| stale |\n"))
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "report.py"), "--check", "--root",
                           str(tmp_path), "--results", str(RESULTS)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "docs/page.md: block cpu:lookup_accuracy differs from its generator" in done.stderr
    assert (tmp_path / "docs" / "page.md").read_text().count("| stale |") == 1  # --check changes nothing


def test_an_unknown_block_id_an_unclosed_block_and_an_unused_generator_fail_the_check(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text(block("no_such_block", "text\n"))
    (tmp_path / "docs" / "b.md").write_text(report.START.format(id="cpu:ab") + "\nnever closed\n")
    (tmp_path / "docs" / "c.md").write_text("<!-- generated: cpu:ab -->\n")
    problems = report.run(tmp_path, RESULTS, check=True)
    assert "docs/a.md: block no_such_block: no generator has that id" in problems
    assert any(p.startswith("docs/b.md: line 1: block cpu:ab is not closed") for p in problems), problems
    assert any(p.startswith("docs/c.md: line 1: a generated-block marker not in the format") for p in problems)
    assert "(no page): generator soak:frames is used on no page" in problems


def test_every_file_a_generator_reads_exists():
    missing = [f"{block_id}: {rel}" for block_id, gen in report.GENERATORS.items() for rel in gen.reads
               if not (REPO / rel).is_file()]
    assert missing == []


@pytest.mark.parametrize("block_id", [b for b, g in report.GENERATORS.items() if g.kind == "results"])
def test_every_results_table_ends_with_its_provenance_line(block_id):
    ctx = report.Context(root=REPO, results=RESULTS, page=REPO / "docs" / "results" / "page.md")
    body = report.render(block_id, ctx)
    assert "|---|" in body
    sources = [line for line in body.rstrip().split("\n") if line.startswith("*Source:")]
    assert body.rstrip().split("\n")[-1].startswith("*Source:")
    for line in sources:
        assert all(part in line for part in PROVENANCE_PARTS), line
    # every file the block read is named on a provenance line (the bundled model's eval.json files too)
    for rel in ctx.read:
        if rel != report.BUNDLED_PROV:
            assert any(f"`{rel}`" in line for line in sources), (rel, sources)


def test_a_results_json_without_provenance_is_an_error(results_copy):
    path = results_copy / "lookup_accuracy.json"
    data = json.loads(path.read_text())
    data.pop("provenance")
    path.write_text(json.dumps(data))
    ctx = report.Context(root=REPO, results=results_copy)
    with pytest.raises(report.ReportError, match="lookup_accuracy.json has no top-level provenance"):
        report.render("cpu:lookup_accuracy", ctx)


def test_the_write_mode_restores_a_hand_edited_block_and_leaves_the_prose(tmp_path):
    page = tmp_path / "docs" / "results" / "cpu.md"
    page.parent.mkdir(parents=True)
    text = (REPO / "docs" / "results" / "cpu.md").read_text()
    edited = text.replace("| nearest |", "| nearest (edited by hand) |")
    assert edited != text
    page.write_text(edited + "\nA line after the blocks.\n")
    report.run(tmp_path, RESULTS, check=False)
    assert page.read_text() == text + "\nA line after the blocks.\n"
    assert [p for p in report.run(tmp_path, RESULTS, check=True) if not p.startswith("(no page)")] == []
