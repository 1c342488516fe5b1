"""An honest ``validate``: run a notebook like the grader does and fail loudly when a test fails.

``nbgrader validate`` prints failures but exits with status 0 (nbgrader issue #1961), so a script
or a student's pre-submission check cannot rely on it. ``python -m rl4lmt.grading validate X.ipynb``
runs the notebook top to bottom in a fresh kernel (nbclient, as the grader does) and exits with
status 1 when a test cell fails; it also flags a notebook whose grade cells were lost (the grader
matches them back by content, but the student should know).
"""
from __future__ import annotations

import json
import pathlib

__all__ = ["validate", "validate_and_report"]


def validate(path: str | pathlib.Path, timeout: int = 120) -> dict:
    """Run a notebook top to bottom like the grader; lists of failed and passed test cells.

    Not nbgrader's Validator: that one also fails a passing test cell that printed a warning or a
    progress bar to stderr, and needs nbgrader, which Colab does not have.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise ValueError(f"path {str(path)!r} does not exist")
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        return {"unreadable": [{"source": f"{path} is not a valid notebook: {exc}"}]}
    graded = [c for c in nb.get("cells", []) if c.get("metadata", {}).get("nbgrader", {}).get("grade")]
    results = _run(path, timeout)
    if not graded:
        results["no_grade_cells"] = [{"source": "no graded cells: the nbgrader metadata was lost (e.g. by "
                                                "Colab or VS Code); re-download the exercise and copy your answers in"}]
    return results


def _run(path: pathlib.Path, timeout: int) -> dict:
    """Run the notebook top to bottom; a graded cell with an error output has failed."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    results: dict = {"failed": [], "passed": []}
    try:
        NotebookClient(nb, timeout=timeout, allow_errors=True,
                       resources={"metadata": {"path": str(path.parent)}}).execute()
    except Exception as exc:  # a hang or a dead kernel is a failure to report, not a crash of the check
        results["failed"].append({"source": "", "error": f"the notebook did not run to the end: {type(exc).__name__}: "
                                                          f"{str(exc).splitlines()[0][:300] if str(exc) else ''}"})
    for cell in nb.cells:
        if not cell.get("metadata", {}).get("nbgrader", {}).get("grade") or cell.cell_type != "code":
            continue
        errors = [o for o in cell.outputs if o.output_type == "error"]
        if errors:
            results["failed"].append({"source": cell.source, "error": f"{errors[0].ename}: {errors[0].evalue}"})
        else:
            results["passed"].append({"source": cell.source})
    return results


def validate_and_report(path: str | pathlib.Path) -> bool:
    """Print what failed; True when the notebook passes every visible test."""
    results = validate(path)
    kinds = ("failed", "changed", "type_changed", "unreadable", "no_grade_cells")
    bad = {k: v for k, v in results.items() if k in kinds and v}
    if not bad:
        print(f"{path}: all visible tests passed ({len(results.get('passed', []))} cells)")
        return True
    for kind, items in bad.items():
        for item in items:
            text = item.get("error") or item.get("source", "")
            print(f"{path}: {kind.replace('_', ' ')}:\n{text.strip()[:1500]}\n")
    return False
