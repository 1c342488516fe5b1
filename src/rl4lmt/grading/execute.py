"""Executing a student's notebook so that one broken cell costs only that cell's points.

``HardenedExecute`` replaces nbgrader's ``Execute`` preprocessor in ``Autograde`` (see
``nbgrader_config.py``). On top of nbgrader's per-cell timeout it adds:

- a **total time limit** per notebook (``total_timeout``): each cell's timeout is cut to the time
  left, and cells after the budget is used up are marked "not run" instead of executed;
- **kernel restart and replay**: when the kernel dies (``os._exit()``, a segfault, SIGXCPU, the
  OOM killer) or ignores the interrupt sent at the timeout (a ``while True`` that swallows
  ``KeyboardInterrupt``), the cell gets an error output saying what happened, a fresh kernel
  (under the same memory limit) re-runs the cells that came before it, outputs discarded, and
  execution goes on with the next cell. So the rest of the notebook is still graded;
- the kernel runs under memory and CPU-time limits (``rl4lmt.grading.kernel``);
- **per-cell limits from the master's own run time** (``rl4lmt.grading.timing``): a cell whose
  master version ran in ``m`` seconds gets ``min(timeout, max(time_floor, time_factor * m))``, so a
  hung cell costs seconds, not the ceiling ``timeout``;
- **no graceful kernel shutdown** (``shutdown_kernel = "immediate"``): once the last cell has run,
  the kernel is killed rather than left to tear down its interpreter (seconds per student).

Every incident is recorded in ``resources["rl4lmt"]["incidents"]`` for the instructor's report.
"""
from __future__ import annotations

import copy
import time

from nbclient.client import NotebookClient
from nbclient.exceptions import CellTimeoutError, DeadKernelError
from nbformat.notebooknode import NotebookNode
from nbgrader.preprocessors import Execute, NbGraderPreprocessor
from traitlets import Enum, Float, Integer

from rl4lmt.grading.kernel import LimitedKernelManager

__all__ = ["HardenedExecute", "StderrIsNotFailure"]


def _error_output(ename: str, evalue: str) -> NotebookNode:
    return NotebookNode(output_type="error", ename=ename, evalue=evalue, traceback=[f"{ename}: {evalue}"])


class HardenedExecute(Execute):
    """nbgrader's ``Execute`` with a total time limit, memory limit, and restart-and-replay."""

    timeout = Integer(120, help="Per-cell time limit in seconds.", allow_none=True).tag(config=True)
    total_timeout = Integer(360, help="Time limit for the whole notebook in seconds (replays included)."
                            ).tag(config=True)
    memory_limit_mb = Integer(3072, help="Heap limit of the kernel in MiB (RLIMIT_DATA); 0 for none.").tag(config=True)
    cpu_limit_s = Integer(0, help="CPU-time limit of the kernel in s (0: 4 x total_timeout).").tag(config=True)
    max_restarts = Integer(4, help="Kernel restarts allowed per notebook; later cells are then not run."
                           ).tag(config=True)
    time_factor = Float(10.0, help="A cell's limit is this many times the master's measured time for it..."
                        ).tag(config=True)
    time_floor = Integer(20, help="... but at least this many seconds (and at most `timeout`); 0 factor: off."
                         ).tag(config=True)
    # The graded notebook's outputs are all in when the last cell has run; a graceful shutdown then
    # only waits for the kernel's own exit (interpreter teardown with torch loaded: ~2.5 s of wall
    # and ~1 s of CPU per student, measured on ch00). The kernel is killed instead, as on a restart.
    shutdown_kernel = Enum(["graceful", "immediate"], default_value="immediate",
                           help="How the kernel is stopped after the last cell (nbclient's option).").tag(config=True)

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("kernel_manager_class", LimitedKernelManager)
        super().__init__(*args, **kwargs)

    # -- kernel ---------------------------------------------------------------------------
    def create_kernel_manager(self):
        km = super().create_kernel_manager()
        if isinstance(km, LimitedKernelManager):
            km.memory_limit_mb = self.memory_limit_mb
            km.cpu_limit_s = self.cpu_limit_s or 4 * self.total_timeout
        return km

    def _measured_times(self) -> dict[str, float]:
        """The master's per-cell seconds for this notebook (``solutions/<a>/<nb>.timing.json``), if measured."""
        meta = (self.resources or {}).get("nbgrader", {})
        if not self.time_factor or not meta.get("assignment") or not meta.get("notebook"):
            return {}
        try:
            import os
            import warnings

            from nbgrader.coursedir import CourseDirectory

            from rl4lmt.grading.timing import load_timing

            cd = CourseDirectory(config=self.config)
            folder = cd.format_path(cd.source_directory, ".", meta["assignment"])
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                times = load_timing(os.path.join(folder, f"{meta['notebook']}.ipynb"))
            for w in caught:  # a stale measurement: say so in the grader's log
                self.log.warning("rl4lmt: %s", w.message)
            return times
        except Exception as exc:  # no measurement: every cell keeps the ceiling
            self.log.warning("rl4lmt: no per-cell times for %s: %s", meta.get("assignment"), exc)
            return {}

    def _get_timeout(self, cell):
        # the per-cell limit (from the master's measured time, capped by `timeout`), cut to what is
        # left of the notebook's total budget
        from rl4lmt.grading.timing import cell_limit

        left = int(self._deadline - time.monotonic())
        ceiling = self.timeout if self.timeout and self.timeout > 0 else left
        gid = (cell.get("metadata", {}) if cell is not None else {}).get("nbgrader", {}).get("grade_id")
        per_cell = cell_limit(self._measured.get(gid), ceiling, self.time_factor, self.time_floor)
        return max(1, min(per_cell, left))

    def _restart(self) -> None:
        """Kill the kernel (it may be dead or stuck) and start a fresh one."""
        self.shutdown_kernel = "immediate"
        try:
            self._cleanup_kernel()
        except Exception as exc:  # a dead kernel may fail to clean up; the new one matters
            self.log.warning("rl4lmt: cleaning up the old kernel failed: %s", exc)
        self.km = self.kc = None
        self.km = self.create_kernel_manager()
        self.start_new_kernel()
        self.start_new_kernel_client()

    # -- execution ------------------------------------------------------------------------
    def preprocess(self, nb, resources=None, km=None):
        NotebookClient.__init__(self, nb, km)
        self.reset_execution_trackers()
        self._check_assign_resources(resources)
        self._deadline = time.monotonic() + self.total_timeout
        self._measured = self._measured_times()
        incidents = self.resources.setdefault("rl4lmt", {}).setdefault("incidents", [])
        restarts = 0
        with self.setup_kernel():
            info = self.wait_for_reply(self.kc.kernel_info())
            self.nb.metadata["language_info"] = info["content"]["language_info"]
            done: list[int] = []  # code cells run in the current kernel, in order (for a replay)
            for index, cell in enumerate(self.nb.cells):
                if cell.cell_type != "code" or not cell.source.strip():
                    continue
                if time.monotonic() >= self._deadline - 1 or restarts > self.max_restarts:
                    why = (f"the notebook used up its total time limit ({self.total_timeout} s)"
                           if restarts <= self.max_restarts else f"the kernel was restarted {restarts - 1} times")
                    cell.outputs = [_error_output("NotRun", f"cell not run: {why}")]
                    incidents.append({"cell": index, "what": "not run", "why": why})
                    continue
                try:
                    self.preprocess_cell(cell, self.resources, index)
                except (CellTimeoutError, DeadKernelError, TimeoutError, RuntimeError) as exc:
                    died = isinstance(exc, DeadKernelError) or not self._alive()
                    if died:
                        ename, msg = "KernelDied", ("the Python kernel died while running this cell "
                                                    "(os._exit(), a crash, or too much memory or CPU time)")
                    else:
                        ename, msg = "CellTimeoutError", ("this cell did not finish in time and did not stop "
                                                          "when interrupted")
                    msg += "; a fresh kernel re-ran the cells above and grading went on"
                    cell.outputs = [o for o in cell.get("outputs", []) if o.get("output_type") != "error"]
                    cell.outputs.append(_error_output(ename, msg))
                    incidents.append({"cell": index, "what": ename, "why": str(exc)[:200]})
                    self.log.warning("rl4lmt: cell %d: %s (%s); restarting the kernel", index, ename, exc)
                    restarts += 1
                    if restarts <= self.max_restarts:
                        self._restart()
                        self._replay(done, incidents)
                    continue
                if any(o.get("ename") == "CellTimeoutError" for o in cell.get("outputs", [])):
                    incidents.append({"cell": index, "what": "CellTimeoutError",
                                      "why": "interrupted at the time limit"})
                done.append(index)
        self.set_widgets_metadata()
        # for the instructor's report: kept in the autograded notebook (plain JSON metadata)
        self.nb.metadata.setdefault("rl4lmt", {})["incidents"] = incidents
        return self.nb, self.resources

    def _alive(self) -> bool:
        try:
            return bool(self.km is not None and self.km.has_kernel and self._run_sync(self.km.is_alive()))
        except Exception:
            return False

    @staticmethod
    def _run_sync(coro):
        from jupyter_core.utils import run_sync

        async def wrap():
            return await coro

        return run_sync(wrap)()

    def _replay(self, done: list[int], incidents: list) -> None:
        """Re-run the earlier cells in the fresh kernel, keeping their original outputs."""
        for index in list(done):
            if time.monotonic() >= self._deadline - 1:
                return
            scratch = copy.deepcopy(self.nb.cells[index])
            try:
                self.execute_cell(scratch, index, store_history=False)
            except (CellTimeoutError, DeadKernelError, TimeoutError, RuntimeError) as exc:
                incidents.append({"cell": index, "what": "replay failed", "why": str(exc)[:200]})
                done.remove(index)
                self._restart()


class StderrIsNotFailure(NbGraderPreprocessor):
    """A test cell fails by raising, not by printing to stderr.

    nbgrader scores a graded code cell 0 when it wrote *anything* to stderr, so a tqdm progress
    bar, a library warning (transformers, torch) or a ``DeprecationWarning`` in a passing test
    cell silently costs its points. This preprocessor (after ``HardenedExecute``, before
    ``SaveAutoGrades``) relabels stderr streams of graded code cells as stdout, text unchanged.
    """

    def preprocess_cell(self, cell, resources, index):
        md = cell.metadata.get("nbgrader", {})
        if cell.cell_type == "code" and md.get("grade"):
            for out in cell.get("outputs", []):
                if out.get("output_type") == "stream" and out.get("name") == "stderr":
                    out["name"] = "stdout"
        return cell, resources
