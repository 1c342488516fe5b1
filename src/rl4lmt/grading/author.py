"""Write and check assignment masters that follow the course conventions (see ``rl4lmt.grading``).

Write a master with a throw-away script (kept OUT of the repository: everything in the
assignment folder is released to students)::

    from rl4lmt.grading.author import Master

    m = Master("ch01-lm", "Chapter 1 - surprisal")       # the setup cell comes first, automatically
    m.markdown("## Task 1: surprisal\\nWrite `surprisal(p)` in bits ...")
    m.code("import numpy as np", grade_id="imports")      # read-only instructor code
    m.solution("surprisal", '''
    def surprisal(p: float) -> float:
        \"\"\"-log2 p: the information content of an event of probability p.\"\"\"
        ### BEGIN SOLUTION
        return -np.log2(p)
        ### END SOLUTION
    ''')
    m.tests("surprisal_tests", points=2, source='''
    got = surprisal(0.5)
    assert abs(got - 1.0) < 1e-9, f"surprisal(0.5) should be 1 bit, got {got}"
    ### BEGIN HIDDEN TESTS
    # hint: use base-2 logarithms, and check p = 1 gives 0 bits
    assert abs(surprisal(0.125) - 3.0) < 1e-9
    ### END HIDDEN TESTS
    ''')
    m.answer("why_bits", points=1, prompt="**Question.** Why bits?", solution="Because ...")
    m.write()   # solutions/ch01-lm/ch01-lm.ipynb, checked against the conventions

Check a master from the shell: ``python -m rl4lmt.grading.author check solutions/ch01-lm``.
Re-stamp the setup cell of every master: ``python -m rl4lmt.grading.author stamp``.
"""
from __future__ import annotations

import argparse
import ast
import builtins
import pathlib
import re
import sys
import textwrap

import nbformat

from rl4lmt.grading import course_root, repository_url, setup_cell_source

__all__ = ["Master", "check_master", "stamp_setup_cells", "free_names", "defined_names"]

BEGIN_SOLUTION, END_SOLUTION = "### BEGIN SOLUTION", "### END SOLUTION"
BEGIN_HIDDEN, END_HIDDEN = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"
_ID = re.compile(r"^[a-z][a-z0-9_]*$")


def _meta(grade_id: str, *, grade=False, solution=False, locked=False, points=None) -> dict:
    md = {"grade": grade, "grade_id": grade_id, "locked": locked, "schema_version": 3,
          "solution": solution, "task": False}
    if grade:
        md["points"] = points
    return {"nbgrader": md}


class Master:
    """A master notebook being written, cell by cell, in nbgrader's format (schema 3)."""

    def __init__(self, assignment: str, title: str, url: str | None = None):
        if not re.match(r"^ch\d\d-[a-z0-9-]+$", assignment):
            raise ValueError(f"assignment must look like 'chNN-topic', got {assignment!r}")
        self.assignment = assignment
        self.url = url
        self.nb = nbformat.v4.new_notebook()
        self.nb.metadata = {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                            "language_info": {"name": "python"}}
        self.code(setup_cell_source(url), grade_id="setup")
        self.markdown(f"# {title}")

    def _add(self, cell):
        cell.source = textwrap.dedent(cell.source).strip("\n")
        self.nb.cells.append(cell)
        return cell

    def markdown(self, text: str):
        """Instructions (unmarked markdown)."""
        return self._add(nbformat.v4.new_markdown_cell(text))

    def code(self, source: str, grade_id: str):
        """Read-only instructor code (imports, data, plots)."""
        return self._add(nbformat.v4.new_code_cell(source, metadata=_meta(grade_id, locked=True)))

    def solution(self, grade_id: str, source: str):
        """A code cell the student completes (solution between the solution markers)."""
        return self._add(nbformat.v4.new_code_cell(source, metadata=_meta(grade_id, solution=True)))

    def tests(self, grade_id: str, points: float, source: str):
        """An autograded test cell: visible asserts, then hidden ones between the hidden-test markers."""
        return self._add(nbformat.v4.new_code_cell(
            source, metadata=_meta(grade_id, grade=True, locked=True, points=points)))

    def answer(self, grade_id: str, points: float, prompt: str, solution: str):
        """A manually graded written answer: a prompt, then a markdown answer cell."""
        self.markdown(prompt)
        text = f"{BEGIN_SOLUTION}\n{textwrap.dedent(solution).strip()}\n{END_SOLUTION}"
        return self._add(nbformat.v4.new_markdown_cell(
            text, metadata=_meta(grade_id, grade=True, solution=True, points=points)))

    def write(self, root: str | pathlib.Path | None = None) -> pathlib.Path:
        """Write ``solutions/<assignment>/<assignment>.ipynb`` and check it against the conventions."""
        folder = pathlib.Path(root or course_root()) / "solutions" / self.assignment
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{self.assignment}.ipynb"
        for i, cell in enumerate(self.nb.cells):  # stable ids: regenerating a master changes nothing
            cell.id = cell.metadata.get("nbgrader", {}).get("grade_id") or f"cell-{i:02d}"
        nbformat.write(self.nb, path)
        problems = check_master(path, url=self.url)
        if problems:
            raise ValueError(f"master {path} breaks the conventions:\n- " + "\n- ".join(problems))
        return path


def _lines_between(source: str, begin: str, end: str) -> list[str]:
    """The lines strictly between ``begin`` and ``end`` marker lines of a cell source."""
    out, inside = [], False
    for line in source.splitlines():
        if begin in line:
            inside = True
        elif end in line:
            inside = False
        elif inside:
            out.append(line)
    return out


def hidden_lines(source: str) -> list[str]:
    """The lines strictly between the hidden-test markers of a cell source."""
    return _lines_between(source, BEGIN_HIDDEN, END_HIDDEN)


def solution_lines(source: str) -> list[str]:
    """The lines strictly between the solution markers of a cell source."""
    return _lines_between(source, BEGIN_SOLUTION, END_SOLUTION)


def master_code_cells(path: str | pathlib.Path) -> dict[str, str]:
    """A master's nbgrader code cells as ``{grade_id: source}`` (for tests that run them piecewise)."""
    nb = nbformat.read(path, as_version=4)
    return {c.metadata["nbgrader"]["grade_id"]: c.source for c in nb.cells
            if c.cell_type == "code" and "nbgrader" in c.metadata}


# names a notebook cell may read without defining them: Python's builtins and IPython's own
_ALWAYS_THERE = set(dir(builtins)) | {"display", "get_ipython", "In", "Out", "__name__"}


def defined_names(source: str) -> set[str]:
    """The functions and classes a cell defines at top level (what a solution cell hands on)."""
    tree = ast.parse(source.replace("%", "#"))
    return {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}


def _bound_in(node: ast.AST) -> set[str]:
    """Names a statement binds in the scope it runs in (not inside nested functions or classes)."""
    out: set[str] = set()

    def visit(n, top=True):
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(n.name)
            if not top:
                return
            # decorators and defaults run in the outer scope, but bind nothing there
            return
        if isinstance(n, ast.Lambda):
            return
        if isinstance(n, ast.Name) and isinstance(n.ctx, (ast.Store, ast.Del)):
            out.add(n.id)
        elif isinstance(n, (ast.Import, ast.ImportFrom)):
            for a in n.names:
                out.add((a.asname or a.name).split(".")[0])
        elif isinstance(n, ast.ExceptHandler) and n.name:
            out.add(n.name)
        elif isinstance(n, (ast.MatchAs, ast.MatchStar)) and n.name:
            out.add(n.name)
        for child in ast.iter_child_nodes(n):
            visit(child, False)

    visit(node)
    return out


def _loads_in(node: ast.AST, deferred: bool = False) -> list[tuple[str, bool]]:
    """(name, deferred) for every name read in a statement; deferred: inside a function body (read at call time)."""
    out: list[tuple[str, bool]] = []

    def visit(n, deferred):
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            args = n.args
            for d in args.defaults + [d for d in args.kw_defaults if d is not None]:
                visit(d, deferred)
            for dec in getattr(n, "decorator_list", []):
                visit(dec, deferred)
            params = {a.arg for a in args.posonlyargs + args.args + args.kwonlyargs}
            params |= {a.arg for a in (args.vararg, args.kwarg) if a is not None}
            body = n.body if isinstance(n.body, list) else [n.body]
            local = set().union(*(_bound_in(b) for b in body)) if body else set()
            inner = [name for b in body for name, _ in _loads_in(b, True)]
            out.extend((name, True) for name in inner if name not in params | local)
            return
        if isinstance(n, (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)):
            targets = set().union(*(_bound_in(g.target) for g in n.generators))
            for g in n.generators:
                out.extend((nm, d) for nm, d in _loads_in(g.iter, deferred) if nm not in targets)
                for cond in g.ifs:
                    out.extend((nm, d) for nm, d in _loads_in(cond, deferred) if nm not in targets)
            elts = [n.key, n.value] if isinstance(n, ast.DictComp) else [n.elt]
            for e in elts:
                out.extend((nm, d) for nm, d in _loads_in(e, deferred) if nm not in targets)
            return
        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load):
            out.append((n.id, deferred))
        if isinstance(n, ast.AugAssign) and isinstance(n.target, ast.Name):
            out.append((n.target.id, deferred))  # x += 1 reads x first
        for child in ast.iter_child_nodes(n):
            visit(child, deferred)

    visit(node, deferred)
    return out


def free_names(source: str, allowed=()) -> set[str]:
    """Names a cell reads that it does not define itself (before use), import, or find in ``allowed``.

    Statement by statement: a name read by a statement must be bound by an earlier statement of
    the cell (or by the statement itself, e.g. a loop variable), be a builtin, or be ``allowed``
    (the student's functions). A name read inside a function the cell defines may be bound
    anywhere in the cell (the function runs later).
    """
    tree = ast.parse(source.replace("%", "#"))
    everywhere = set().union(*(_bound_in(st) for st in tree.body)) if tree.body else set()
    ok = _ALWAYS_THERE | set(allowed)
    bound: set[str] = set()
    free: set[str] = set()
    for st in tree.body:
        here = _bound_in(st)
        if isinstance(st, ast.AugAssign) and isinstance(st.target, ast.Name):
            here = here - {st.target.id}  # n += 1 reads n before it binds it
        for name, deferred in _loads_in(st):
            if name in ok or name in bound or name in here or (deferred and name in everywhere):
                continue
            free.add(name)
        bound |= here
    return free


def check_master(path: str | pathlib.Path, url: str | None = None) -> list[str]:
    """Problems with a master notebook (empty list: it follows the conventions)."""
    path = pathlib.Path(path)
    if path.is_dir():
        path = path / f"{path.name}.ipynb"
    if not path.is_file():
        return [f"{path} does not exist"]
    nb = nbformat.read(path, as_version=4)
    problems: list[str] = []
    if url is None:  # the repository address of the course this master belongs to
        url = repository_url(course_root(path) / "_config.yml")
    if path.stem != path.parent.name:
        problems.append(f"notebook {path.name} should be named after its folder {path.parent.name}")
    if not nb.cells or nb.cells[0].source != setup_cell_source(url):
        problems.append("the first cell is not the generated setup cell (run: python -m rl4lmt.grading.author stamp)")
    ids = set()
    graded = 0
    students: set[str] = set()  # the functions the student writes: the only names a test cell may take from elsewhere
    for cell in nb.cells:
        if cell.cell_type == "code" and cell.metadata.get("nbgrader", {}).get("solution"):
            try:
                students |= defined_names(cell.source)
            except SyntaxError:
                pass  # reported below
    for i, cell in enumerate(nb.cells):
        md = cell.metadata.get("nbgrader")
        if cell.cell_type == "code" and cell.get("outputs"):
            problems.append(f"cell {i}: outputs are not stripped")
        if cell.cell_type == "code" and not md:
            problems.append(f"cell {i}: code cell without nbgrader metadata (lock it or make it a solution/test)")
        if not md:
            continue
        gid = md.get("grade_id", "")
        if not _ID.match(gid):
            problems.append(f"cell {i}: grade_id {gid!r} is not lowercase snake_case")
        if gid in ids:
            problems.append(f"cell {i}: grade_id {gid!r} used twice")
        ids.add(gid)
        if md.get("schema_version") != 3:
            problems.append(f"cell {i} ({gid}): schema_version must be 3")
        src = cell.source
        if md.get("solution") and (BEGIN_SOLUTION not in src or END_SOLUTION not in src):
            problems.append(f"cell {i} ({gid}): solution cell without both solution markers")
        if md.get("grade"):
            graded += 1
            if not md.get("points"):
                problems.append(f"cell {i} ({gid}): graded cell without points")
        if md.get("grade") and not md.get("solution"):
            if cell.cell_type != "code" or not md.get("locked"):
                problems.append(f"cell {i} ({gid}): test cells must be locked code cells")
            if BEGIN_HIDDEN in src:
                if END_HIDDEN not in src:
                    problems.append(f"cell {i} ({gid}): hidden tests without an end marker")
                if not any(line.strip().lower().startswith("# hint:") for line in hidden_lines(src)):
                    problems.append(f"cell {i} ({gid}): hidden tests without a '# hint: ...' line")
            if cell.cell_type == "code":
                try:
                    free = free_names(src, students)
                except SyntaxError:
                    free = set()  # reported below
                if free:
                    problems.append(f"cell {i} ({gid}): test cell reads {', '.join(sorted(free))} from other cells; "
                                    "a test cell imports and rebuilds what it uses (only the student's functions "
                                    f"{', '.join(sorted(students)) or '(none)'} may come from elsewhere)")
        if cell.cell_type == "code":
            try:
                ast.parse(src.replace("%", "#"))
            except SyntaxError as e:
                problems.append(f"cell {i} ({gid}): syntax error {e}")
    if graded == 0:
        problems.append("no graded cell")
    return problems


def stamp_setup_cells(root: str | pathlib.Path | None = None, url: str | None = None) -> list[pathlib.Path]:
    """Make the first cell of every master the generated setup cell; return the masters changed."""
    changed = []
    root = pathlib.Path(root or course_root())
    src = setup_cell_source(url if url is not None else repository_url(root / "_config.yml"))
    for path in sorted((root / "solutions").glob("ch*/ch*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        first = nb.cells[0] if nb.cells else None
        if first is not None and first.metadata.get("nbgrader", {}).get("grade_id") == "setup":
            if first.source == src:
                continue
            first.source = src
        else:
            nb.cells.insert(0, nbformat.v4.new_code_cell(src, metadata=_meta("setup", locked=True)))
        nbformat.write(nb, path)
        changed.append(path)
    return changed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rl4lmt.grading.author", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check", help="check masters against the conventions")
    c.add_argument("paths", nargs="*", help="assignment folders or notebooks (default: all in solutions/)")
    sub.add_parser("stamp", help="re-stamp the setup cell of every master from _config.yml")
    args = p.parse_args(argv)
    if args.cmd == "stamp":
        for path in stamp_setup_cells():
            print(f"stamped {path}")
        return 0
    paths = args.paths or sorted(str(q) for q in (course_root() / "solutions").glob("ch*") if q.is_dir())
    bad = 0
    for path in paths:
        problems = check_master(path)
        print(f"{path}: {'ok' if not problems else ''}")
        for problem in problems:
            print(f"  - {problem}")
        bad += bool(problems)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
