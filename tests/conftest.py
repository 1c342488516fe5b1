"""Shared test set-up: the suite runs offline, on the CPU threads it is given, with fixed seeds."""
import os

# Offline, always: nothing in the suite may reach a model hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")

import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def root() -> pathlib.Path:
    """The repository root."""
    return ROOT


# CI cannot pass by skipping. `.ci/run` exports RL4LMT_CI=1; there, a test in these modules
# (the built book in a browser, the plain install, the leak check of the built book) that skips
# because a prerequisite is missing (no book, no Chromium, no notebooks) FAILS with the skip's
# reason. Locally the skip stays (loud: `-ra` prints every reason).
CI = os.environ.get("RL4LMT_CI", "").strip() not in ("", "0")
MUST_RUN_IN_CI = {"test_browser.py", "test_install.py", "test_assignments.py"}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if CI and report.skipped and not hasattr(report, "wasxfail") and item.path.name in MUST_RUN_IN_CI:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under CI (RL4LMT_CI=1), which is a failure there: {reason}"
