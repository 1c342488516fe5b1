"""Generic checks for EVERY assignment in solutions/: honest tests, an up-to-date release, no leaks.

For each master: it follows the conventions (rl4lmt.grading docstring); its first cell is the
generated setup cell; nbgrader's release of it equals the committed ``exercises/``; the solution
gets full autograded marks and every test cell fails on the untouched release (so no test is
vacuous); no solution line or hidden-test line appears in ``exercises/`` or in the built book.
"""
from __future__ import annotations

import html
import json
import pathlib
import re

import nbformat
import pytest

from rl4lmt.grading import setup_cell_source
from rl4lmt.grading.author import check_master
from rl4lmt.grading.cli import grade
from rl4lmt.grading.course import assignments, build_course, flatten, scores, secret_lines, solved_from_master, submit

ROOT = pathlib.Path(__file__).resolve().parents[1]
ASSIGNMENTS = assignments(ROOT)


def _master(name):
    return nbformat.read(ROOT / "solutions" / name / f"{name}.ipynb", as_version=4)


def _secrets(name):
    release = ROOT / "exercises" / name / f"{name}.ipynb"
    release_text = "\n".join(c.source for c in nbformat.read(release, as_version=4).cells) if release.exists() else ""
    return secret_lines(_master(name), release_text)


class _Courses:
    """One throw-away course per assignment, released and graded (solution and release, in parallel)
    on first use, so ``pytest -k ch00`` grades ch00 only."""

    def __init__(self, base: pathlib.Path):
        self.base, self._done = base, {}

    def __getitem__(self, name: str) -> dict:
        if name not in self._done:
            path = build_course(self.base / name, [name], ROOT)
            release = nbformat.read(path / "exercises" / name / f"{name}.ipynb", as_version=4)
            submit(path, "solution", name, solved_from_master(_master(name), release))
            submit(path, "release", name, release)
            results = grade(name, path, jobs=2, limit=900)
            self._done[name] = {"path": path, "results": results, "scores": scores(path, name)}
        return self._done[name]


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    return _Courses(tmp_path_factory.mktemp("assignments"))


def test_there_are_assignments():
    assert "ch00-world" in ASSIGNMENTS, ASSIGNMENTS


@pytest.mark.parametrize("name", ASSIGNMENTS)
def test_master_follows_conventions(name):
    problems = check_master(ROOT / "solutions" / name)
    assert not problems, f"{name}: " + "; ".join(problems)


@pytest.mark.parametrize("name", ASSIGNMENTS)
def test_setup_cell_is_the_generated_one(name):
    want = setup_cell_source()
    assert _master(name).cells[0].source == want, f"{name}: master's first cell is not the setup cell (make exercises)"
    released = ROOT / "exercises" / name / f"{name}.ipynb"
    assert released.exists(), f"exercises/{name} missing: run make exercises"
    assert nbformat.read(released, as_version=4).cells[0].source == want


@pytest.mark.slow
@pytest.mark.parametrize("name", ASSIGNMENTS)
def test_exercises_are_up_to_date(course, name):
    """The committed release equals what nbgrader generates from the master now."""
    fresh, committed = course[name]["path"] / "exercises" / name, ROOT / "exercises" / name
    files = lambda d: sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file())  # noqa: E731
    assert files(fresh) == files(committed), f"{name}: files differ; run make exercises"
    for rel in files(fresh):
        a, b = (fresh / rel).read_bytes(), (committed / rel).read_bytes()
        if rel.endswith(".ipynb"):
            a, b = json.loads(a), json.loads(b)
        assert a == b, f"exercises/{name}/{rel} is out of date with solutions/; run make exercises"


@pytest.mark.slow
@pytest.mark.parametrize("name", ASSIGNMENTS)
def test_solution_gets_full_marks(course, name):
    bad = [r for r in course[name]["results"] if not r["ok"]]
    assert not bad, "\n".join(r["log"][-3000:] for r in bad)
    got = course[name]["scores"]["solution"]
    assert got["max_code"] > 0, f"{name} has no autograded points"
    failing = {k: v for k, v in got["cells"].items() if v is not None and v == 0}
    assert got["code"] == got["max_code"], (f"{name}: solution scored {got['code']}/{got['max_code']}; "
                                            f"failing: {failing}")


@pytest.mark.slow
@pytest.mark.parametrize("name", ASSIGNMENTS)
def test_release_gets_no_autograded_points(course, name):
    """Every test cell fails on the untouched release: no test passes without the student's work."""
    got = course[name]["scores"]["release"]
    passing = {k: v for k, v in got["cells"].items() if v}
    assert got["code"] == 0 and not passing, f"{name}: the release scores {got['code']}; passing cells {passing}"


@pytest.mark.parametrize("name", ASSIGNMENTS)
def test_no_leak_into_exercises(name):
    secrets = _secrets(name)
    assert secrets["solution"], f"{name}: no distinctive solution line found, the leak check would be vacuous"
    folder = ROOT / "exercises" / name
    for path in folder.rglob("*"):
        if not path.is_file():
            continue
        if path.suffix == ".ipynb":
            nb = nbformat.read(path, as_version=4)
            text = "\n".join(c.source + "\n" + json.dumps(c.get("outputs", [])) for c in nb.cells)
        else:
            text = path.read_text(errors="replace")
        text = flatten(text)
        for kind, lines in secrets.items():
            leaked = [ln for ln in lines if ln in text]
            assert not leaked, f"{path.relative_to(ROOT)} contains {kind} lines: {leaked[:3]}"


@pytest.mark.parametrize("name", ASSIGNMENTS)
def test_no_leak_into_book_html(name):
    build = ROOT / "_build" / "html"
    if not build.is_dir():
        pytest.skip("_build/html is absent (run make book): the book leak check did not run")
    secrets = _secrets(name)
    for page in build.rglob("*.html"):
        # code is highlighted token by token: strip the tags before looking for whole lines
        text = flatten(html.unescape(re.sub(r"<[^>]+>", "", page.read_text(errors="replace"))))
        for kind, lines in secrets.items():
            leaked = [ln for ln in lines if ln in text]
            assert not leaked, f"{page.relative_to(ROOT)} contains {kind} lines of {name}: {leaked[:3]}"


def test_leak_check_finds_a_planted_leak():
    """The leak check is not vacuous: it finds the master's own solutions in the master."""
    secrets = _secrets("ch00-world")
    planted = flatten("\n".join(c.source for c in _master("ch00-world").cells))
    assert all(any(sn in planted for sn in secrets[kind]) for kind in ("solution", "hidden"))
    clean = flatten("\n".join(c.source for c in nbformat.read(ROOT / "exercises" / "ch00-world" / "ch00-world.ipynb",
                                                              as_version=4).cells))
    assert not any(sn in clean for kind in secrets for sn in secrets[kind])
