"""The pages name only tests that exist: every `test/...py` that README.md or a docs/**/*.md page mentions is a
file, and every pytest node id (`path::test_name`, a `*` in a name matching as a glob) is a function or class
defined in that file. A renamed or deleted test fails here, so docs/reliability.md cannot drift from the
tests; and each test of the node's robustness files has its row there."""

from __future__ import annotations

import ast
import fnmatch
import functools
import re
from pathlib import Path

import pytest
from conftest import REPO

PAGES = sorted([REPO / "README.md", *(REPO / "docs").rglob("*.md")])
RELIABILITY = REPO / "docs" / "reliability.md"
# Tests whose only subject is what the node survives: each must be named in docs/reliability.md.
ROBUSTNESS_FILES = ("test/ros/nodes/test_perception_robustness.py", "test/ros/nodes/test_perception_process.py",
                    "test/ros/nodes/test_perception_accounting.py", "test/ros/nodes/test_perception_camera_input.py",
                    "test/ros/nodes/test_perception_callbacks.py", "test/ros/nodes/test_perception_queries.py")

# `../` (a link from a docs page), then a path; a node id adds `::name` parts (a parametrised id's `[...]` is
# left out: the function name is what must exist).
NODE_ID = re.compile(r"(?<![\w./-])((?:\.\./)*)([\w./-]*\.py)((?:::[\w*]+)+)")
TEST_PATH = re.compile(r"(?<![\w./-])((?:\.\./)*)(test/[\w./-]*\.py)\b")


@functools.cache
def defined_names(path: Path) -> frozenset[str]:
    """Names of the functions and classes defined anywhere in a Python file."""
    tree = ast.parse(path.read_text())
    return frozenset(node.name for node in ast.walk(tree)
                     if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef))


def resolve(page: Path, up: str, path: str) -> Path:
    """A path as a page writes it: from the repository root, or relative to the page when it starts with ../"""
    return (page.parent / up / path).resolve() if up else REPO / path


def reference_problems(page: Path, text: str) -> list[str]:
    """What in `text` (the content of `page`) names a test file or a test that does not exist."""
    problems = []
    for match in NODE_ID.finditer(text):
        up, path, names = match.groups()
        file = resolve(page, up, path)
        if not file.is_file():
            where = "" if up or path.startswith("test/") else " (write node ids from the repository root: test/...)"
            problems.append(f"{match.group(0)}: no file {path}{where}")
            continue
        for name in names.split("::")[1:]:
            if not fnmatch.filter(defined_names(file), name):
                problems.append(f"{match.group(0)}: {path} defines no {name}")
    for match in TEST_PATH.finditer(text):
        up, path = match.groups()
        if not resolve(page, up, path).is_file():
            problems.append(f"{match.group(0)}: no file {path}")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_test_a_page_names_exists(page):
    problems = reference_problems(page, page.read_text())
    assert not problems, f"{page.relative_to(REPO)} names tests that do not exist:\n" + "\n".join(problems)


def test_the_check_fails_on_a_renamed_or_missing_test():
    page = REPO / "docs" / "page.md"
    good = ("`test/ros/input/test_tf_cache.py::test_dynamic_frames_are_bounded_and_stale_ones_expire`, "
            "`test/ros/input/test_tf_cache.py::test_dynamic_*`, [link](../test/conftest.py), `test/test_launch.py`")
    assert reference_problems(page, good) == []
    bad = {
        "`test/ros/input/test_tf_cache.py::test_item11_dynamic_frames_are_bounded_and_stale_ones_expire`":
            "defines no test_item11",
        "`test/ros/input/test_tf_cache.py::test_item11_*`": "defines no test_item11_*",
        "`test/ros/input/test_no_such_file.py`": "no file test/ros/input/test_no_such_file.py",
        "`test_play.py::test_the_player_exits_0_on_sigint_or_sigterm_while_playing`": "from the repository root",
        "[link](../../test/conftest.py)": "no file",
    }
    for text, expected in bad.items():
        problems = reference_problems(page, text)
        assert len(problems) == 1 and expected in problems[0], (text, problems)


def test_reliability_page_names_every_robustness_test():
    text = RELIABILITY.read_text()
    for path in ROBUSTNESS_FILES:
        tests = sorted(name for name in defined_names(REPO / path) if name.startswith("test_"))
        assert tests, f"{path} has no tests"
        missing = [name for name in tests if f"`{path}::{name}`" not in text]
        assert not missing, f"docs/reliability.md has no row for {path}::{missing}"
