"""Mutation testing of an assignment's tests: plausible mistakes must fail, other correct solutions pass.

One harness for every assignment. A per-assignment table file (``tests/test_chNN_assignment.py``)
lists, per task (the ``grade_id`` of a solution cell), the solution *bodies* of plausible mistakes
(``WRONG``) and of differently written correct solutions (``RIGHT``), and calls::

    from rl4lmt.grading.mutants import MutationSuite

    SUITE = MutationSuite("ch02-decoding", WRONG, RIGHT, base=["setup", "imports"],
                          needs={"sample": ["temperature_scale", "top_k_filter", "top_p_filter"]})
    test_master_solution_passes, test_plausible_mistake_fails, test_other_correct_solution_passes = SUITE.pytest_tests()

Each case replaces the lines between the solution markers of the task's cell by the body
(indented by four spaces, as inside a ``def``), runs the ``base`` instructor cells and the cells in
``needs[task]`` (with the master's solutions), then runs the task's test cell (``<task>_tests``,
visible and hidden tests) in a namespace that holds ONLY the functions defined by solution cells:
a test cell that reads anything else from another cell fails with a ``NameError`` here, as the
self-containment rule of the course says it must not. As in the course's grader (whose
``StderrIsNotFailure`` keeps a warning from costing points), a test fails only by raising.
A mutant may also be an :class:`Edit` of the master's own solution (for long solutions).

The report for the instructor (caught mutants per task, correct alternatives accepted)::

    python -m rl4lmt.grading.mutants tests/test_ch02_assignment.py [--master OLD.ipynb]

``--master`` grades the same table against another version of the master (e.g. before a change).
"""
from __future__ import annotations

import argparse
import ast
import builtins
import contextlib
import importlib.util
import io
import pathlib
import re
import sys
import warnings

from rl4lmt.grading.author import master_code_cells

__all__ = ["MutationSuite", "Edit", "swap_solution", "solution_names"]

_SOL = re.compile(r"(### BEGIN SOLUTION\n)(.*?)(\n[ \t]*### END SOLUTION)", re.S)


def swap_solution(source: str, body: str, indent: str = "    ") -> str:
    """``source`` with the lines between its solution markers replaced by ``body``.

    As in the tables: the first line of ``body`` gets ``indent``; later lines are written as they
    would stand inside the function (``"x = 1\n    return x"``).
    """
    if not _SOL.search(source):
        raise ValueError("source has no solution markers")
    # the body's first line is indented here; its other lines carry their own indentation ("a\n    b")
    text = indent + body.strip("\n").lstrip()
    return _SOL.sub(lambda m: m.group(1) + text + m.group(3), source, count=1)


class Edit:
    """A mutant written as edits of the master's own solution: ``Edit((old, new), ...)``.

    Each ``old`` must occur exactly once in the master's solution cell; long solutions (a beam
    search) get their plausible mistakes this way instead of as whole new bodies.
    """

    def __init__(self, *pairs: tuple[str, str]):
        if not pairs or not all(isinstance(p, tuple) and len(p) == 2 for p in pairs):
            raise ValueError("Edit takes (old, new) pairs")
        self.pairs = pairs

    def apply(self, source: str) -> str:
        for old, new in self.pairs:
            if source.count(old) != 1:
                raise ValueError(f"Edit: {old!r} occurs {source.count(old)} times in the master's solution, not once")
            source = source.replace(old, new)
        return source


def solution_names(cells: dict[str, str], solution_ids) -> set[str]:
    """Names of the functions and classes that the given solution cells define at top level."""
    out = set()
    for gid in solution_ids:
        for node in ast.parse(cells[gid]).body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                out.add(node.name)
    return out


def _solution_ids(path) -> list[str]:
    import nbformat

    nb = nbformat.read(path, as_version=4)
    return [c.metadata["nbgrader"]["grade_id"] for c in nb.cells
            if c.cell_type == "code" and c.metadata.get("nbgrader", {}).get("solution")]


class MutationSuite:
    """The WRONG / RIGHT tables of one assignment, run against its master's test cells."""

    def __init__(self, assignment: str, wrong: dict, right: dict, base=("setup", "imports"), needs=None,
                 root=None, master=None, strict_namespace: bool = True):
        from rl4lmt.grading import course_root

        self.assignment = assignment
        self.wrong, self.right = wrong, right
        self.base, self.needs = list(base), dict(needs or {})
        self.root = pathlib.Path(root or course_root())
        self.master = pathlib.Path(master) if master else self.root / "solutions" / assignment / f"{assignment}.ipynb"
        self.strict_namespace = strict_namespace
        self._cells = None
        self._base_ns = None

    # -- running ------------------------------------------------------------------------------
    @property
    def cells(self) -> dict[str, str]:
        if self._cells is None:
            self._cells = master_code_cells(self.master)
            self._solutions = _solution_ids(self.master)
        return self._cells

    def base_namespace(self) -> dict:
        """The namespace after the ``base`` instructor cells (run once, then copied per case)."""
        if self._base_ns is None or not self.strict_namespace:  # loose: a mutant may have changed shared objects
            ns: dict = {"__name__": "__main__"}
            with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for gid in self.base:
                    exec(compile(self.cells[gid], gid, "exec"), ns)
            self._base_ns = ns
        return self._base_ns

    def verdict(self, task: str, body: str | Edit | None = None) -> str | None:
        """Run ``task`` (with ``body`` as its solution; None: the master's) and its tests.

        Returns None when the test cell passes, else what went wrong (the error the cells raised).
        """
        cells = self.cells
        ns = dict(self.base_namespace())
        sources = []
        for gid in self.needs.get(task, []) + [task]:
            src = cells[gid]
            if gid == task and isinstance(body, Edit):
                src = body.apply(src)  # a table error (an edit that does not apply) raises here
            elif gid == task and body is not None:
                src = swap_solution(src, body)
            sources.append((gid, src))
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                for gid, src in sources:
                    exec(compile(src, gid, "exec"), ns)
        except Exception as exc:  # the solution cell itself fails (a syntax error, a crash at import)
            return f"the solution cell {gid} failed: {type(exc).__name__}: {str(exc)[:300]}"
        if self.strict_namespace:  # only the student's functions cross over into the test cell
            names = solution_names(cells, self._solutions)
            test_ns = {"__name__": "__main__", "__builtins__": builtins}
            test_ns.update({k: ns[k] for k in names if k in ns})
        else:
            test_ns = ns
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
                    warnings.catch_warnings():
                warnings.simplefilter("ignore")
                exec(compile(cells[f"{task}_tests"], f"{task}_tests", "exec"), test_ns)
        except Exception as exc:  # an assertion, or a crash inside the student's function
            return f"{type(exc).__name__}: {str(exc)[:300]}"
        return None

    # -- reports ------------------------------------------------------------------------------
    def report(self) -> dict:
        """Per task: (caught, total) mistakes, (accepted, total) correct alternatives, and the misses."""
        out = {}
        for task in sorted(set(self.wrong) | set(self.right), key=list(self.cells).index):
            missed = [m for m, body in self.wrong.get(task, {}).items() if self.verdict(task, body) is None]
            rejected = {w: e for w, body in self.right.get(task, {}).items() if (e := self.verdict(task, body))}
            n_w, n_r = len(self.wrong.get(task, {})), len(self.right.get(task, {}))
            out[task] = {"caught": n_w - len(missed), "wrong": n_w, "missed": missed,
                         "accepted": n_r - len(rejected), "right": n_r, "rejected": rejected}
        return out

    # -- pytest -------------------------------------------------------------------------------
    def pytest_tests(self):
        """Three parametrised pytest test functions: master passes, mistakes fail, alternatives pass."""
        import pytest

        suite = self

        @pytest.mark.parametrize("task", sorted(set(self.wrong) | set(self.right)))
        def test_master_solution_passes(task):
            err = suite.verdict(task, None)
            assert err is None, f"{suite.assignment}: the master's {task} fails its own tests: {err}"

        @pytest.mark.parametrize("task, mistake", [(t, m) for t, ms in self.wrong.items() for m in ms])
        def test_plausible_mistake_fails(task, mistake):
            assert suite.verdict(task, suite.wrong[task][mistake]) is not None, f"{task}: '{mistake}' got full marks"

        @pytest.mark.parametrize("task, way", [(t, w) for t, ws in self.right.items() for w in ws])
        def test_other_correct_solution_passes(task, way):
            err = suite.verdict(task, suite.right[task][way])
            assert err is None, f"{task}: correct '{way}' was marked wrong: {err}"

        return test_master_solution_passes, test_plausible_mistake_fails, test_other_correct_solution_passes


def _load_suite(table: str) -> MutationSuite:
    spec = importlib.util.spec_from_file_location("_mutation_table", table)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.SUITE


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rl4lmt.grading.mutants", description=__doc__.splitlines()[0])
    p.add_argument("tables", nargs="+", help="test files that define SUITE (a MutationSuite)")
    p.add_argument("--master", default=None,
                   help="grade against this master notebook instead (a folder: <folder>/<assignment>.ipynb)")
    p.add_argument("--loose", action="store_true", help="test cells see the whole notebook namespace (for old masters)")
    args = p.parse_args(argv)
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("MPLBACKEND", "Agg")
    bad = 0
    for table in args.tables:
        suite = _load_suite(table)
        if args.master:
            m = pathlib.Path(args.master)
            suite.master = m / f"{suite.assignment}.ipynb" if m.is_dir() else m
        if args.loose:
            suite.strict_namespace = False
        rep = suite.report()
        c, w = sum(r["caught"] for r in rep.values()), sum(r["wrong"] for r in rep.values())
        a, r_ = sum(r["accepted"] for r in rep.values()), sum(r["right"] for r in rep.values())
        print(f"{suite.assignment}: {c}/{w} mistakes caught ({100 * c / max(w, 1):.0f}%), "
              f"{a}/{r_} correct alternatives accepted")
        for task, r in rep.items():
            print(f"  {task}: caught {r['caught']}/{r['wrong']}, accepted {r['accepted']}/{r['right']}")
            for m in r["missed"]:
                print(f"    MISSED: {m}")
            for m, e in r["rejected"].items():
                print(f"    REJECTED: {m}: {e}")
        bad += (c < w) or (a < r_)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
