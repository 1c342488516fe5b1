"""nbgrader configuration of the course: the repository root is the course directory.

    nbgrader generate_assignment ch00-world --force     # (make exercises does this for all)
    nbgrader autograde ch00-world                       # hardened, see below
    nbgrader generate_feedback ch00-world               # hidden tests show only pass/fail + hint
    nbgrader export                                     # grades.csv
    python -m rl4lmt.grading grade ch00-world           # the whole class in parallel + report

The hardening is configured here and lives in rl4lmt.grading (see book/instructors.md).
"""
import os

from nbgrader.preprocessors import (AssignLatePenalties, CheckCellMetadata, ClearOutput, DeduplicateIds,
                                    GetGrades, IgnorePattern, LimitOutput, OverwriteCells,
                                    OverwriteKernelspec, SaveAutoGrades)
from nbconvert.preprocessors import CSSHTMLHeaderPreprocessor

from rl4lmt.grading.execute import HardenedExecute, StderrIsNotFailure
from rl4lmt.grading.feedback import HideHiddenTests
from rl4lmt.grading.repair import RepairSubmission, TolerantNotebookExporter

c = get_config()  # noqa: F821 (provided by nbgrader when it loads this file)

# --- the course directory --------------------------------------------------------------------
c.CourseDirectory.root = os.path.dirname(os.path.abspath(__file__))
c.CourseDirectory.course_id = "rl4lmt"
c.CourseDirectory.source_directory = "solutions"    # masters (instructor only)
c.CourseDirectory.release_directory = "exercises"   # generated student versions (committed)
c.CourseDirectory.ignore = [".ipynb_checkpoints", "*.pyc", "__pycache__", "feedback", ".DS_Store",
                            "*.timing.json"]  # the master's measured cell times stay instructor-side

# --- release: the stubs students see -----------------------------------------------------------
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
c.ClearSolutions.text_stub = "YOUR ANSWER HERE"

# --- autograde: repair, then the instructor's tests under limits ------------------------------
# An unreadable file (invalid JSON, empty) is graded as the untouched release, with a reason.
c.Autograde.exporter_class = TolerantNotebookExporter
c.Autograde.sanitize_preprocessors = [
    RepairSubmission,   # match lost/rewritten metadata, reordered/duplicated/retyped/deleted cells
    ClearOutput,
    DeduplicateIds,
    OverwriteKernelspec,
    OverwriteCells,     # the test cells that run are the instructor's, from the gradebook
    CheckCellMetadata,
]
c.Autograde.autograde_preprocessors = [
    HardenedExecute,    # per-cell + total time limit, memory limit, restart and replay
    StderrIsNotFailure,  # a warning or a tqdm bar on stderr does not fail a passing test cell
    IgnorePattern,
    LimitOutput,
    SaveAutoGrades,
    AssignLatePenalties,
    CheckCellMetadata,
]
c.HardenedExecute.timeout = 120          # s per cell at most (a solution cell takes < 60 s) ...
c.HardenedExecute.time_factor = 10.0     # ... and at most 10 x the master's measured time for that cell
c.HardenedExecute.time_floor = 20        # ... but never under 20 s (solutions/<a>/<a>.timing.json, see rl4lmt.grading.timing)
c.HardenedExecute.total_timeout = 360    # s per notebook (a solution notebook takes < 120 s)
c.HardenedExecute.memory_limit_mb = 3072  # heap of the kernel (RLIMIT_DATA); torch needs ~0.5 GB
c.HardenedExecute.iopub_timeout = 4      # s to wait for output after an interrupt
c.HardenedExecute.shutdown_kernel = "immediate"  # killed after the last cell: a graceful exit costs ~2.5 s
c.HardenedExecute.raise_on_iopub_timeout = True
c.LimitOutput.max_lines = 200
c.OverwriteCells.add_missing_cells = False  # RepairSubmission already put back missing cells

# --- feedback: no hidden test source, no traceback quoting one -------------------------------
c.GenerateFeedback.preprocessors = [GetGrades, HideHiddenTests, CSSHTMLHeaderPreprocessor]

# --- export -------------------------------------------------------------------------------------
c.ExportApp.plugin_class = "nbgrader.plugins.export.CsvExportPlugin"
c.CsvExportPlugin.to = "grades.csv"
