"""The course's hardened nbgrader pipeline, and the conventions every assignment follows.

Conventions for writing an assignment master (read this before writing ``solutions/chNN-*``)
=============================================================================================

1. **One folder, one notebook.** ``solutions/chNN-topic/chNN-topic.ipynb`` (folder name ==
   notebook name == nbgrader assignment id), plus any *small* data files the notebook reads by
   a relative path. Everything in the folder is copied into the release, so never put a build
   script or anything with solutions next to the master: write masters with a throw-away script
   (outside the repository) that uses :mod:`rl4lmt.grading.author` (see the example there).

2. **First cell = the course setup cell**, exactly :func:`setup_cell_source` (the author helper
   inserts it, ``make exercises`` re-stamps it, a test checks it). It installs ``rl4lmt`` from the
   course repository on Colab (the address lives only in ``_config.yml``), does nothing where
   ``rl4lmt`` is importable, seeds with ``rl4lmt.set_seed(0)`` and sets ``DEVICE``.

3. **Every code cell carries nbgrader metadata** (``schema_version: 3``), one of three kinds:

   - *instructor code* (imports, data loading, plots): ``locked`` read-only cell;
   - *solution* cell: ``solution: true``; the student's part between ``### BEGIN SOLUTION`` and
     ``### END SOLUTION`` (the release gets ``# YOUR CODE HERE`` / ``raise NotImplementedError()``).
     Keep the ``def name(...):`` line and the docstring *outside* the markers so the student keeps
     the signature (it is also how a submission whose metadata was lost is matched back);
   - *test* cell: ``grade: true, locked: true, points: n``; visible asserts first, then hidden ones
     between ``### BEGIN HIDDEN TESTS`` and ``### END HIDDEN TESTS``. A test cell scores all its
     points or none, so give each task its own test cell.

   Markdown cells may stay unmarked, except a *written answer*: a markdown cell with
   ``grade: true, solution: true, points: n`` (manually graded), the model answer between the
   solution markers.

4. **grade ids** are lowercase ``snake_case``, unique in the notebook, stable across edits:
   ``setup``, ``<task>`` for a solution cell, ``<task>_tests`` for its tests, ``<topic>`` for
   instructor code and written answers.

5. **Visible tests teach**: every assert message says what was expected and what came back,
   e.g. ``assert abs(got - want) < 1e-6, f"surprisal(0.5) should be 1 bit, got {got}"``. Use
   :func:`rl4lmt.grading.check_close` for numbers and arrays. A test cell is SELF-CONTAINED: it
   imports what it uses and rebuilds its inputs (models, tensors, transition tables); only the
   functions the student writes in solution cells come from other cells, so a student who
   reassigns a name (``P``, ``model``, ``check_close``) cannot change what a test checks. The
   master checker rejects a test cell that reads any other free name. Helpers several test cells
   need live in :mod:`rl4lmt.grading.testkit` (e.g. comparisons with ``generate`` that accept a
   numerical near-tie).

6. **Hidden tests catch plausible mistakes** (wrong log base, off-by-one, forgetting EOS, ...)
   by comparing with an independent reference (the package, the world's exact probabilities,
   brute force) on random and edge-case inputs, and probe as a matter of course: extremes (large
   logits in float32, long sequences whose probability underflows, gamma near 1), that inputs are
   left unchanged, return types, and that randomness follows the given seed/generator. A correct
   solution written differently (loop vs vectorised) must pass. Each assignment has a mutation
   table ``tests/test_chNN_assignment.py`` for :mod:`rl4lmt.grading.mutants` (WRONG bodies that
   must fail, RIGHT bodies that must pass). Put one short ``# hint: ...`` comment line inside the hidden block:
   the generated feedback shows only pass/fail and that hint, never the hidden source.

7. **The solution calls the package** for everything except what the student writes; seeded;
   the whole notebook runs in <= 120 s on 2 CPU cores, no cell longer than 60 s, offline.

8. **Release**: ``make exercises`` regenerates ``exercises/`` from ``solutions/`` (nbgrader
   ``generate_assignment``); commit both. ``tests/test_assignments.py`` then checks every
   assignment automatically: the solution gets full marks, the release gets no autograded
   points, no solution or hidden-test line leaks, the release is up to date, the setup cell is
   the generated one. Check a master alone with ``python -m rl4lmt.grading.author check
   solutions/chNN-topic``.

The hardening lives in nbgrader's own configuration (``nbgrader_config.py``) and in this package:
``repair`` (match a damaged submission back to the release), ``execute`` (per-cell and total
time limits, kernel restart and replay after a crash), ``kernel`` (memory limit on the kernel
process), ``feedback`` (no hidden test in feedback), ``validate`` and ``cli`` (grade a class in
parallel, one-line report, CSV).
"""
from __future__ import annotations

import pathlib
import re

import numpy as np

__all__ = ["setup_cell_source", "repository_url", "check_close", "course_root", "ROOT"]

# The repository root when the package is installed editable from a checkout. Only a fallback:
# the course is found from nbgrader_config.py (course_root), so a wheel install grades too.
ROOT = pathlib.Path(__file__).resolve().parents[3]


def course_root(start: str | pathlib.Path | None = None) -> pathlib.Path:
    """The course directory: the nearest folder, from ``start`` (default: the current directory)
    upwards, that holds ``nbgrader_config.py``.

    Where none is found, the checkout this package is installed from (editable install) if it is a
    course; else a ValueError naming ``start``.
    """
    here = pathlib.Path(start if start is not None else pathlib.Path.cwd()).resolve()
    if here.is_file():
        here = here.parent
    for folder in (here, *here.parents):
        if (folder / "nbgrader_config.py").is_file():
            return folder
    if start is None and (ROOT / "nbgrader_config.py").is_file():
        return ROOT
    raise ValueError(f"start {str(here)!r} is not inside a course directory (no nbgrader_config.py in it or above it)")


def repository_url(config_path: str | pathlib.Path | None = None) -> str:
    """The course repository address from ``_config.yml`` (``repository.url``): the one place it lives.

    Only needed at generation time on the instructor's machine; notebooks never call it.
    """
    path = pathlib.Path(config_path) if config_path is not None else course_root() / "_config.yml"
    if not path.is_file():
        raise ValueError(f"config_path {str(path)!r} does not exist (run from a course checkout)")
    import yaml  # jupyter-book's dependency; needed on the instructor's machine only

    cfg = yaml.safe_load(path.read_text())
    url = (cfg or {}).get("repository", {}).get("url")
    if not isinstance(url, str) or not re.match(r"^https?://\S+$", url):
        raise ValueError(f"config_path {str(path)!r} has no valid repository.url (got {url!r})")
    return url.rstrip("/")


def setup_cell_source(url: str | None = None) -> str:
    """The first cell of every exercise notebook, generated from the repository address.

    On Colab (or any machine where ``import rl4lmt`` fails) it pip-installs
    ``rl4lmt @ git+<url>``; where the package is importable (laptop with the course installed,
    CI, the autograder) it installs nothing. Then it seeds everything and picks the device.
    """
    url = repository_url() if url is None else url
    if not isinstance(url, str) or not re.match(r"^https?://\S+$", url):
        raise ValueError(f"url must be an http(s) address, got {url!r}")
    return (
        "# Course setup (generated from the course configuration; identical in every assignment).\n"
        "# On Colab it installs the course package rl4lmt; where rl4lmt is installed it installs nothing.\n"
        "import importlib, subprocess, sys\n"
        "try:\n"
        "    import rl4lmt\n"
        "except ImportError:  # Colab / fresh laptop: install the course package from its repository\n"
        "    subprocess.run([sys.executable, \"-m\", \"pip\", \"install\", \"--quiet\",\n"
        f"                    \"rl4lmt @ git+{url}\"], check=True)\n"
        "    importlib.invalidate_caches()\n"
        "    import rl4lmt\n"
        "rl4lmt.set_seed(0)  # the same numbers on every run\n"
        "DEVICE = rl4lmt.get_device()  # the GPU when there is one (Colab GPU runtime), else the CPU\n"
        "print(f\"rl4lmt {rl4lmt.__version__} ready on {DEVICE}\")"
    )


def check_close(got, want, name: str, rtol: float = 1e-6, atol: float = 1e-9) -> None:
    """Assert that ``got`` equals ``want`` up to ``|got - want| <= atol + rtol |want|`` (elementwise).

    The assertion message teaches: it names the quantity, the expected value and what came back
    (shape mismatch, NaN, or the largest difference).
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    try:
        g = np.asarray(got.detach().cpu() if hasattr(got, "detach") else got, dtype=float)
    except (TypeError, ValueError):
        raise AssertionError(f"{name}: expected a number/array like {want!r}, got {got!r}") from None
    w = np.asarray(want.detach().cpu() if hasattr(want, "detach") else want, dtype=float)
    if g.shape != w.shape:
        raise AssertionError(f"{name}: expected shape {w.shape}, got shape {g.shape} ({got!r})")
    if np.isnan(g).any() and not np.isnan(w).any():
        raise AssertionError(f"{name}: expected {want!r}, got NaN in {got!r}")
    if not np.allclose(g, w, rtol=rtol, atol=atol, equal_nan=True):
        if g.ndim == 0:
            raise AssertionError(f"{name}: expected {float(w):.6g}, got {float(g):.6g}")
        i = np.unravel_index(np.argmax(np.abs(g - w)), g.shape)
        raise AssertionError(f"{name}: at index {tuple(int(k) for k in i)} expected {w[i]:.6g}, got {g[i]:.6g}")
