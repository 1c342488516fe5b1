"""Throw-away courses for the grading tests and benchmarks: build, submit, read grades.

``build_course(dest)`` copies the course's nbgrader configuration and masters into ``dest`` and
generates the release there with nbgrader, so tests never touch the instructor's gradebook.
``solved_from_master`` turns a master into what a student who solved everything would submit.
"""
from __future__ import annotations

import copy
import pathlib
import shutil

import nbformat

from rl4lmt.grading import course_root
from rl4lmt.grading.author import BEGIN_SOLUTION, END_SOLUTION, hidden_lines, solution_lines

__all__ = ["assignments", "build_course", "solved_from_master", "submit", "scores", "secret_lines", "flatten"]


def assignments(root: str | pathlib.Path | None = None) -> list[str]:
    """Every assignment folder in ``solutions/``."""
    return sorted(p.name for p in (pathlib.Path(root or course_root()) / "solutions").glob("ch*") if p.is_dir())


def build_course(dest: str | pathlib.Path, names: list[str] | None = None, root=None) -> pathlib.Path:
    """A fresh course directory at ``dest`` with the given masters released by nbgrader."""
    from rl4lmt.grading.cli import release

    root, dest = pathlib.Path(root or course_root()), pathlib.Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("nbgrader_config.py", "_config.yml"):
        shutil.copy(root / name, dest / name)
    for name in names or assignments(root):
        shutil.copytree(root / "solutions" / name, dest / "solutions" / name, dirs_exist_ok=True)
    release(names, dest, measure=False)  # the masters' committed timing.json files came along
    return dest


def solved_from_master(master: nbformat.NotebookNode, release: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The release with every solution cell replaced by the master's solution (markers removed)."""
    solved = copy.deepcopy(release)
    by_id = {c.metadata.get("nbgrader", {}).get("grade_id"): c for c in master.cells}
    for cell in solved.cells:
        md = cell.metadata.get("nbgrader", {})
        if md.get("solution"):
            lines = by_id[md["grade_id"]].source.splitlines()
            cell.source = "\n".join(ln for ln in lines if BEGIN_SOLUTION not in ln and END_SOLUTION not in ln)
    return solved


def submit(course: pathlib.Path, student: str, assignment: str, content) -> pathlib.Path:
    """Put a submission (a notebook, or raw bytes/str for broken files) into ``submitted/``."""
    folder = pathlib.Path(course) / "submitted" / student / assignment
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{assignment}.ipynb"
    if isinstance(content, (bytes, str)):
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    else:
        nbformat.write(content, path)
    return path


def scores(course: pathlib.Path, assignment: str) -> dict[str, dict]:
    """Per student: autograded code score, its maximum, and each graded cell's auto score."""
    from nbgrader.api import Gradebook

    out = {}
    with Gradebook(f"sqlite:///{pathlib.Path(course) / 'gradebook.db'}?timeout=60") as gb:
        for sub in gb.assignment_submissions(assignment):
            cells = {}
            for nb in sub.notebooks:
                for g in nb.grades:
                    cells[g.name] = g.auto_score
            out[sub.student.id] = {"code": sub.code_score, "max_code": sub.max_code_score, "cells": cells,
                                   "needs_manual": sub.needs_manual_grade}
    return out


def flatten(text: str) -> str:
    """Text with each line stripped and blank lines dropped: where secrets are looked for."""
    return "\n".join(ln.strip() for ln in text.splitlines() if ln.strip())


def secret_lines(master: nbformat.NotebookNode, release_text: str, min_len: int = 40) -> dict[str, set[str]]:
    """Distinctive snippets of a master's solutions and hidden tests, to look for in ``flatten(text)``.

    A snippet is two consecutive non-blank lines of a solution or hidden block (stripped, joined
    by a newline, at least 20 characters together), or one such line of at least ``min_len``
    characters. Snippets that occur in the release anyway are not secrets. Pairs keep a generic
    line such as ``words = text.split()`` from counting as a leak on its own.
    """
    released = flatten(release_text)
    out = {"solution": set(), "hidden": set()}
    for cell in master.cells:
        for kind, lines in (("solution", solution_lines(cell.source)), ("hidden", hidden_lines(cell.source))):
            lines = [ln.strip() for ln in lines if ln.strip()]
            snippets = [f"{a}\n{b}" for a, b in zip(lines, lines[1:]) if len(a) + len(b) >= 20]
            snippets += [ln for ln in lines if len(ln) >= min_len]
            out[kind].update(sn for sn in snippets if sn not in released)
    return out
