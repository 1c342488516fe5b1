"""Match a damaged submission back to the released notebook before nbgrader grades it.

Colab and VS Code drop or rewrite cell metadata; students reorder, duplicate, delete cells and
switch them between code and markdown. Stock nbgrader then loses the grade ids and scores the
affected tasks 0 without telling anyone. ``RepairSubmission`` (first in
``Autograde.sanitize_preprocessors``) rebuilds the notebook the student *meant* to submit:

1. each submitted cell is matched to a released cell, in this order of trust: its nbgrader
   ``grade_id``; identical content (whitespace-normalised); for a solution cell, the functions and
   classes it defines (the released stub keeps the ``def`` line); fuzzy similarity (rapidfuzz);
   finally the position between matched neighbours (a written answer whose text is all new);
2. duplicates: the instructor's cells are kept once; of several copies of a solution cell, the
   last one the student edited is graded (untouched stubs are dropped, other copies stay as
   ordinary cells so the code still runs in the same order);
3. the notebook is rebuilt in the released order with the released metadata and cell types; the
   student's extra cells stay after the cell they followed;
4. a released cell that truly is missing is put back: a test cell or instructor cell as released
   (nbgrader's OverwriteCells then restores the instructor's tests), a solution or written answer
   as the released stub with a notice, so it scores 0 *with a reason*.

Everything done is logged as a warning and recorded in ``nb.metadata["rl4lmt"]["repairs"]`` (the
grading report reads it there).
"""
from __future__ import annotations

import copy
import os
import re
import uuid

import nbformat
from nbconvert.exporters import NotebookExporter
from nbformat.notebooknode import NotebookNode
from nbgrader.preprocessors import NbGraderPreprocessor
from rapidfuzz import fuzz

__all__ = ["RepairSubmission", "TolerantNotebookExporter", "repair_notebook", "release_reference"]

MISSING_CODE = "# [rl4lmt] This cell was missing from the submission; the released stub was put back (0 points).\n"
MISSING_TEXT = "**[rl4lmt] This answer was missing from the submission (0 points).**\n\n"
_DEF = re.compile(r"^(?:async\s+)?(?:def|class)\s+([A-Za-z_]\w*)", re.M)


def _norm(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.strip().splitlines() if line.strip())


def _kind(cell) -> str:
    md = cell.get("metadata", {}).get("nbgrader", {})
    if not md.get("grade_id"):
        return "plain"
    if md.get("solution"):
        return "answer" if md.get("grade") else "solution"
    return "test" if md.get("grade") else "locked"


def _gid(cell) -> str | None:
    return cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")


def _set_type(cell, cell_type: str) -> None:
    """Change a cell's type in place, keeping its source (nbformat-valid either way)."""
    if cell.cell_type == cell_type:
        return
    cell.cell_type = cell_type
    if cell_type == "code":
        cell.outputs, cell.execution_count = [], None
        cell.pop("attachments", None)  # only markdown cells may carry attachments
    else:
        cell.pop("outputs", None)
        cell.pop("execution_count", None)


def release_reference(config, assignment: str, notebook: str, db_url: str | None = None) -> NotebookNode | None:
    """The released notebook students started from (``exercises/<assignment>/<notebook>.ipynb``)."""
    from nbgrader.coursedir import CourseDirectory

    coursedir = CourseDirectory(config=config)
    path = os.path.join(coursedir.format_path(coursedir.release_directory, ".", assignment), f"{notebook}.ipynb")
    if os.path.isfile(path):
        return nbformat.read(path, as_version=4)
    if db_url is None:
        return None
    # no release on disk: rebuild the reference from the gradebook (hidden tests removed)
    from nbgrader.api import Gradebook

    from rl4lmt.grading.author import BEGIN_HIDDEN, END_HIDDEN

    nb = nbformat.v4.new_notebook()
    with Gradebook(db_url) as gb:
        source_nb = gb.find_notebook(notebook, assignment)
        graded = {c.name: c.max_score for c in source_nb.grade_cells}
        solutions = {c.name for c in source_nb.solution_cells}
        for sc in source_nb.source_cells:
            lines, inside = [], False
            for line in sc.source.splitlines():
                if BEGIN_HIDDEN in line:
                    inside = True
                elif END_HIDDEN in line:
                    inside = False
                elif not inside:
                    lines.append(line)
            md = {"grade": sc.name in graded, "grade_id": sc.name, "locked": sc.locked, "schema_version": 3,
                  "solution": sc.name in solutions, "task": False}
            if sc.name in graded:
                md["points"] = graded[sc.name]
            make = nbformat.v4.new_code_cell if sc.cell_type == "code" else nbformat.v4.new_markdown_cell
            nb.cells.append(make("\n".join(lines), metadata={"nbgrader": md}))
    return nb


def repair_notebook(nb: NotebookNode, ref: NotebookNode) -> tuple[NotebookNode, list[dict]]:
    """Rebuild submission ``nb`` in the shape of the released notebook ``ref``; returns (nb, repairs)."""
    repairs: list[dict] = []
    sub = list(nb.cells)
    refs = list(ref.cells)
    ref_by_id = {_gid(c): i for i, c in enumerate(refs) if _gid(c)}
    ref_norm = [_norm(c.source) for c in refs]
    stub_norm = {i: ref_norm[i] for i, c in enumerate(refs) if _kind(c) in ("solution", "answer")}
    claims: dict[int, list[int]] = {}  # ref index -> submitted indices claiming it
    owner: dict[int, int] = {}  # submitted index -> ref index

    def claim(s: int, r: int, how: str) -> None:
        owner[s] = r
        claims.setdefault(r, []).append(s)
        gid = _gid(refs[r])
        if how != "metadata" and gid:
            repairs.append({"grade_id": gid, "what": f"matched by {how}", "cell": s})

    # 1. grade ids the submission still carries
    for s, cell in enumerate(sub):
        gid = _gid(cell)
        if gid in ref_by_id:
            claim(s, ref_by_id[gid], "metadata")
    # 2. identical content (whitespace-normalised); a released cell may be claimed by several copies
    for s, cell in enumerate(sub):
        if s in owner:
            continue
        text = _norm(cell.source)
        if not text:
            continue
        for r, rt in enumerate(ref_norm):
            if rt == text:
                claim(s, r, "content")
                break
    # 3. solution cells: the names they define (the released stub keeps its def/class lines)
    for r, ref_cell in enumerate(refs):
        if _kind(ref_cell) != "solution":  # even if an untouched stub copy already claimed it
            continue
        names = set(_DEF.findall(ref_cell.source))
        if not names:
            continue
        for s, cell in enumerate(sub):
            if s not in owner and names <= set(_DEF.findall(cell.source)):
                claim(s, r, "the functions it defines")
    # 4. fuzzy similarity for what is still unmatched (edited text, changed whitespace)
    for r, ref_cell in enumerate(refs):
        if r in claims or not ref_norm[r] or _kind(ref_cell) == "plain":
            continue
        best, best_s = 0.0, None
        for s, cell in enumerate(sub):
            if s in owner or not cell.source.strip():
                continue
            score = fuzz.ratio(ref_norm[r], _norm(cell.source))
            if score > best:
                best, best_s = score, s
        if best_s is not None and best >= 80:
            claim(best_s, r, f"similar content ({best:.0f}%)")
    # 5. position: an unmatched graded/solution cell takes an unmatched cell next to its neighbours
    def free_near(r: int, cell_type: str) -> int | None:
        prev = [(rr, s) for s, rr in owner.items() if rr < r]
        nxt = [(rr, s) for s, rr in owner.items() if rr > r]
        p = max(prev)[1] if prev else -1  # where the released cell before it ended up
        q = min(nxt)[1] if nxt else len(sub)  # ... and the one after it
        ok = lambda s: s not in owner and sub[s].source.strip()  # noqa: E731
        between = [s for s in range(p + 1, q) if ok(s)] if p < q else []
        near = [s for s in range(len(sub)) if ok(s) and min(abs(s - p), abs(s - q)) <= 2]
        for group in (between, near):  # in order first; else beside a neighbour (cells were moved)
            group.sort(key=lambda s: (sub[s].cell_type != cell_type, min(abs(s - p), abs(s - q))))
            if group:
                return group[0]
        return None

    for r, ref_cell in enumerate(refs):
        if r in claims or _kind(ref_cell) not in ("solution", "answer"):
            continue
        s = free_near(r, ref_cell.cell_type)
        if s is not None:
            claim(s, r, "position")

    # duplicates: instructor cells once; solution copies -> the last edited one is graded
    chosen: dict[int, int] = {}
    extras_demoted: set[int] = set()
    for r, ss in claims.items():
        kind = _kind(refs[r])
        if len(ss) == 1:
            chosen[r] = ss[0]
            continue
        gid = _gid(refs[r]) or f"cell {r}"
        if kind in ("solution", "answer"):
            edited = [s for s in ss if _norm(sub[s].source) != stub_norm.get(r)]
            keep = max(edited) if edited else max(ss)
            chosen[r] = keep
            for s in ss:
                if s != keep and s in edited:
                    extras_demoted.add(s)  # kept as an ordinary cell, runs where it was
            repairs.append({"grade_id": gid, "what": f"{len(ss)} copies; graded the last edited one", "cell": keep})
        else:
            chosen[r] = min(ss)
            repairs.append({"grade_id": gid, "what": f"{len(ss)} copies; kept one", "cell": min(ss)})

    # rebuild in the released order, with the student's extra cells after the cell they followed
    placed = set(chosen.values())
    anchor_of: dict[int, int] = {}
    last_ref = -1
    for s in range(len(sub)):
        if s in placed:
            last_ref = owner[s]
        elif s not in owner or s in extras_demoted:
            anchor_of[s] = last_ref
    extras: dict[int, list[int]] = {}
    for s, a in anchor_of.items():
        extras.setdefault(a, []).append(s)

    def plain(s: int):
        cell = copy.deepcopy(sub[s])
        cell.get("metadata", {}).pop("nbgrader", None)
        return cell

    cells = [plain(s) for s in extras.get(-1, [])]
    for r, ref_cell in enumerate(refs):
        kind, gid = _kind(ref_cell), _gid(ref_cell)
        if r in chosen:
            s = chosen[r]
            cell = copy.deepcopy(sub[s])
            if cell.cell_type != ref_cell.cell_type:
                repairs.append({"grade_id": gid or f"cell {r}", "cell": s,
                                "what": f"cell type {cell.cell_type} -> {ref_cell.cell_type}"})
                _set_type(cell, ref_cell.cell_type)
            cell.setdefault("metadata", {})
            if "nbgrader" in ref_cell.metadata:
                cell.metadata["nbgrader"] = copy.deepcopy(ref_cell.metadata["nbgrader"])
            else:
                cell.metadata.pop("nbgrader", None)
            cells.append(cell)
        elif kind != "plain":
            cell = copy.deepcopy(ref_cell)
            if kind in ("solution", "answer"):
                cell.source = (MISSING_CODE if cell.cell_type == "code" else MISSING_TEXT) + cell.source
                repairs.append({"grade_id": gid, "cell": None,
                                "what": "missing from the submission: released stub put back, 0 points"})
            else:
                repairs.append({"grade_id": gid, "cell": None,
                                "what": "missing from the submission: instructor's cell put back"})
            cells.append(cell)
        else:
            cells.append(copy.deepcopy(ref_cell))
        cells.extend(plain(s) for s in extras.get(r, []))
    # positions changed? (reordering)
    kept_order = [s for s in sorted(placed, key=lambda s: owner[s])]
    if kept_order != sorted(kept_order):
        repairs.append({"grade_id": None, "what": "cells were reordered; restored the released order", "cell": None})
    # unique cell ids (copies share them), valid code/markdown fields
    seen = set()
    for cell in cells:
        if cell.get("id") in seen or not cell.get("id"):
            cell["id"] = uuid.uuid4().hex[:8]
        seen.add(cell["id"])
        if cell.cell_type == "code":
            cell.setdefault("outputs", [])
            cell.setdefault("execution_count", None)
    out = copy.deepcopy(nb)
    out.cells = cells
    out.nbformat, out.nbformat_minor = 4, max(5, int(nb.get("nbformat_minor", 5) or 5))
    return out, repairs


class RepairSubmission(NbGraderPreprocessor):
    """Sanitize-step preprocessor: rebuild a damaged submission from the release (see module doc)."""

    def preprocess(self, nb, resources):
        meta = resources["nbgrader"]
        ref = release_reference(self.config, meta["assignment"], meta["notebook"], meta.get("db_url"))
        if ref is None:
            self.log.warning("rl4lmt: no release found for %s/%s; submission not repaired",
                             meta["assignment"], meta["notebook"])
            return nb, resources
        nb, repairs = repair_notebook(nb, ref)
        record = nb.metadata.setdefault("rl4lmt", {})
        record["repairs"] = record.get("repairs", []) + repairs
        for rep in repairs:
            self.log.warning("rl4lmt: %s/%s %s: %s", meta.get("student"), meta["notebook"], rep["grade_id"] or "-",
                             rep["what"])
        return nb, resources


class TolerantNotebookExporter(NotebookExporter):
    """NotebookExporter that never stops a batch on an unreadable submission.

    Invalid JSON, an empty file or something that is not a notebook is replaced by the released
    notebook (every answer a stub, so 0 points), and the reason is recorded in
    ``nb.metadata["rl4lmt"]["unreadable"]`` and logged with the file name.
    """

    def from_filename(self, filename, resources=None, **kw):
        try:
            with open(filename, encoding="utf-8") as f:
                nb = nbformat.reads(f.read(), as_version=4)
            if not isinstance(nb.get("cells"), list):
                raise ValueError("no list of cells")
        except Exception as exc:  # any unreadable file: grade it as the untouched release, with a reason
            meta = (resources or {}).get("nbgrader", {})
            reason = f"unreadable submission {filename}: {type(exc).__name__}: {str(exc)[:200]}"
            self.log.error("rl4lmt: %s -> scored as the untouched release (0 points)", reason)
            nb = release_reference(self.config, meta.get("assignment"), meta.get("notebook"), meta.get("db_url"))
            if nb is None:
                raise
            nb.metadata.setdefault("rl4lmt", {})["unreadable"] = reason
        else:
            return super().from_filename(filename, resources=resources, **kw)
        resources = {} if resources is None else resources
        resources.setdefault("metadata", {})
        resources["metadata"]["name"] = os.path.splitext(os.path.basename(filename))[0]
        resources["metadata"]["path"] = os.path.dirname(filename)
        return self.from_notebook_node(nb, resources=resources, **kw)
