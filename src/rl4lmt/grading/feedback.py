"""Feedback without leaks: hidden tests show only pass/fail and their hint.

An autograded notebook holds the instructor's test cells *with* their hidden tests (nbgrader puts
them back before execution), and a failing hidden assert leaves a traceback that quotes it.
``HideHiddenTests`` runs in ``GenerateFeedback.preprocessors`` after ``GetGrades``. For every
cell with hidden tests it

- shows the source as released (the hidden block removed);
- decides from the traceback's line number whether a visible or a hidden test failed;
- a visible failure keeps its error message and the traceback lines that quote no hidden line;
- a hidden failure replaces the error by "hidden tests: failed" and the block's ``# hint:`` line;
- a cell that passed gets "visible and hidden tests passed";
- stream outputs lose any line that quotes a hidden line.
"""
from __future__ import annotations

import re

from nbformat.notebooknode import NotebookNode
from nbgrader.preprocessors import NbGraderPreprocessor

from rl4lmt.grading.author import BEGIN_HIDDEN, END_HIDDEN

__all__ = ["HideHiddenTests", "split_hidden"]

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_CELL_LINE = re.compile(r"(?:Cell In\s*\[\d*\]|<ipython-input-[^>]*>|input_\d+), line (\d+)")
GENERIC_HINT = "check your function on other inputs and edge cases named in the task"


def split_hidden(source: str) -> tuple[str, list[str], tuple[int, int] | None, str]:
    """(released source, hidden lines, 1-based line range of the hidden block, hint)."""
    kept, hidden, span, inside, hint = [], [], None, False, ""
    for number, line in enumerate(source.splitlines(), start=1):
        if BEGIN_HIDDEN in line:
            inside, start = True, number
        elif END_HIDDEN in line:
            inside, span = False, (start, number)
        elif inside:
            hidden.append(line)
            if not hint and line.strip().lower().startswith("# hint:"):
                hint = line.strip()[len("# hint:"):].strip()
        else:
            kept.append(line)
    if inside:  # no end marker: everything after the begin marker is hidden
        span = (start, len(source.splitlines()))
    return "\n".join(kept), hidden, span, hint


def _stream(text: str) -> NotebookNode:
    return NotebookNode(output_type="stream", name="stdout", text=text)


class HideHiddenTests(NbGraderPreprocessor):
    """GenerateFeedback preprocessor: no hidden test source or traceback reaches the student."""

    def preprocess_cell(self, cell, resources, index):
        if cell.cell_type != "code" or BEGIN_HIDDEN not in cell.source:
            return cell, resources
        released, hidden, span, hint = split_hidden(cell.source)
        secrets = [h.strip() for h in hidden if len(h.strip()) >= 3]

        def leaks(text: str) -> bool:
            plain = _ANSI.sub("", text)
            return any(s in plain for s in secrets) or BEGIN_HIDDEN in plain or END_HIDDEN in plain

        outputs, failed_where, error = [], None, None
        for out in cell.get("outputs", []):
            if out.output_type == "error":
                error = out
                lines = [int(m.group(1)) for tb in out.get("traceback", [])
                         for m in _CELL_LINE.finditer(_ANSI.sub("", tb))]
                if not lines:
                    failed_where = "unknown"
                elif span and span[0] <= lines[0] <= span[1]:
                    failed_where = "hidden"
                else:
                    failed_where = "visible"
            elif out.output_type == "stream":
                kept = [ln for ln in out.text.splitlines(keepends=True) if not leaks(ln)]
                if kept:
                    outputs.append(NotebookNode(output_type="stream", name=out.name, text="".join(kept)))
            else:
                outputs.append(out)
        if error is None:
            outputs.append(_stream("Visible and hidden tests passed.\n"))
        elif failed_where == "hidden":
            outputs.append(_stream(f"Visible tests passed. Hidden tests: FAILED. Hint: {hint or GENERIC_HINT}.\n"))
        else:
            tb = ["\n".join(ln for ln in entry.split("\n") if not leaks(ln)) for entry in error.get("traceback", [])]
            evalue = "" if leaks(error.get("evalue", "")) else error.get("evalue", "")
            outputs.append(NotebookNode(output_type="error", ename=error.ename, evalue=evalue, traceback=tb))
            outputs.append(_stream("Hidden tests: not run, because the cell stopped before them.\n"))
        cell.source = released
        cell.outputs = outputs
        return cell, resources
