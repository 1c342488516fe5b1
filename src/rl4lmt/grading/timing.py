"""Per-cell time limits derived from the master's own measured run time.

A hung cell should not cost the ceiling (``HardenedExecute.timeout``, minutes) when the master's
cell runs in a second. At release time ``measure_master`` runs the master once (nbclient, fresh
kernel) and records each graded/solution/instructor cell's wall time in
``solutions/<assignment>/<assignment>.timing.json`` (with a hash of the master's code, so a stale
measurement is noticed; nbgrader does not copy ``*.timing.json`` into the release). The grader
then gives each cell

    limit = min(ceiling, max(floor, factor * measured))

(``HardenedExecute.time_factor``, ``time_floor``, ``timeout``); cells without a measurement
(a student's extra cells, a master never measured) keep the ceiling.
"""
from __future__ import annotations

import hashlib
import json
import pathlib
import time
import warnings

__all__ = ["timing_path", "master_hash", "measure_master", "load_timing", "cell_limit", "StaleTimingWarning"]


def timing_path(master: str | pathlib.Path) -> pathlib.Path:
    master = pathlib.Path(master)
    return master.with_name(f"{master.stem}.timing.json")


def master_hash(master: str | pathlib.Path) -> str:
    """A hash of the master's code cells (sources only: outputs and metadata do not change run time)."""
    import nbformat

    nb = nbformat.read(master, as_version=4)
    text = "\n\x00".join(c.source for c in nb.cells if c.cell_type == "code")
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _seconds(cell) -> float | None:
    from datetime import datetime

    ex = cell.get("metadata", {}).get("execution", {})
    a, b = ex.get("iopub.execute_input"), ex.get("shell.execute_reply")
    if not a or not b:
        return None
    parse = lambda s: datetime.fromisoformat(s.replace("Z", "+00:00"))  # noqa: E731
    return max(0.0, (parse(b) - parse(a)).total_seconds())


def measure_master(master: str | pathlib.Path, timeout: int = 600) -> dict:
    """Run the master once and write (and return) its per-cell times: ``{"cells": {grade_id: s}, ...}``."""
    import nbformat
    from nbclient import NotebookClient

    master = pathlib.Path(master)
    nb = nbformat.read(master, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=True,
                            resources={"metadata": {"path": str(master.parent)}})
    start = time.monotonic()
    client.execute()
    cells = {}
    for cell in nb.cells:
        gid = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
        if cell.cell_type == "code" and gid:
            s = _seconds(cell)
            if s is not None:
                cells[gid] = round(s, 3)
    record = {"master_hash": master_hash(master), "total_s": round(time.monotonic() - start, 2), "cells": cells}
    timing_path(master).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    return record


class StaleTimingWarning(UserWarning):
    """A master's ``timing.json`` was measured for other code than the master has now."""


def load_timing(master: str | pathlib.Path) -> dict[str, float]:
    """The measured per-cell seconds of a master (empty when it was never measured).

    A measurement whose ``master_hash`` no longer matches the master's code is stale: a cell may
    have become slower since, and a limit derived from its old time could stop a correct
    submission. It is ignored, so every cell keeps the ceiling (never less generous), with a
    :class:`StaleTimingWarning` that says how to measure again.
    """
    path = timing_path(master)
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text())
        cells = {k: float(v) for k, v in record.get("cells", {}).items()}
    except (ValueError, AttributeError):
        return {}
    if record.get("master_hash") != master_hash(master):
        warnings.warn(StaleTimingWarning(
            f"{path} was measured for other code than {pathlib.Path(master).name} has now: per-cell time "
            f"limits fall back to the ceiling. Measure again with `python -m rl4lmt.grading release "
            f"{pathlib.Path(master).parent.name}`."), stacklevel=2)
        return {}
    return cells


def cell_limit(measured: float | None, ceiling: int | None, factor: float, floor: float) -> int | None:
    """``min(ceiling, max(floor, factor * measured))``; the ceiling where nothing was measured."""
    if measured is None:
        return ceiling
    limit = max(float(floor), factor * float(measured))
    if ceiling and ceiling > 0:
        limit = min(limit, ceiling)
    return int(round(limit))
