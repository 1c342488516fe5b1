"""CI cannot pass by skipping: `.ci/run` marks the run as CI, and there a missing prerequisite fails.

Locally, the browser test skips loudly where the book is not built or Chromium is missing, and the
plain-install test where there is nothing to install; under CI (``RL4LMT_CI=1``, exported by
``.ci/run``) the same situations are failures that carry the reason, and ``make chromium`` fails
where it cannot install Chromium. Each check runs the real thing (the script, make, pytest) in a
subprocess with a fake piece of the environment (a ``make`` that only reports, an ``apt-get`` that
fails, a book folder that is empty).
"""
from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _fake_bin(folder: pathlib.Path, **scripts: str) -> pathlib.Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, body in scripts.items():
        path = folder / name.replace("_", "-")
        path.write_text("#!/bin/sh\n" + body + "\n")
        path.chmod(0o755)
    return folder


def _env(ci: bool, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RL4LMT_CI", "PYTEST_ADDOPTS")}
    if ci:
        env["RL4LMT_CI"] = "1"
    env.update(extra)
    return env


def test_ci_script_marks_the_run_as_ci(tmp_path):
    fake = _fake_bin(tmp_path / "bin", make='echo "fake make: RL4LMT_CI=${RL4LMT_CI:-unset} args=$*"')
    out = subprocess.run(["bash", str(ROOT / ".ci" / "run")], capture_output=True, text=True, timeout=60,
                         env=_env(False, PATH=f"{fake}{os.pathsep}{os.environ['PATH']}"))
    assert out.returncode == 0, out.stderr
    assert "fake make: RL4LMT_CI=1 args=test" in out.stdout, out.stdout


@pytest.mark.parametrize("uid", ["0", "1000"], ids=["root-apt-fails", "not-root"])
def test_make_chromium_fails_under_ci_where_it_cannot_install(tmp_path, uid):
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    fake = _fake_bin(tmp_path / "bin", apt_get="exit 100", id=f'echo {uid}')
    cmd = ["make", "--no-print-directory", "-s", "chromium", "CHROMIUM=rl4lmt-no-such-browser"]
    path = f"{fake}{os.pathsep}{os.environ['PATH']}"
    local = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60, env=_env(False, PATH=path))
    assert local.returncode == 0, local.stderr
    assert "WARNING" in local.stdout and "SKIPPED" in local.stdout, local.stdout
    ci = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60, env=_env(True, PATH=path))
    assert ci.returncode != 0, f"make chromium passed under CI without chromium:\n{ci.stdout}\n{ci.stderr}"
    reason = "apt-get could not install chromium" if uid == "0" else "needs root and apt-get"
    assert "ERROR (CI)" in ci.stderr and reason in ci.stderr, ci.stderr


def _pytest(args: list[str], ci: bool, cwd: pathlib.Path = ROOT, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rA", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=300, env=_env(ci, **extra))


@pytest.mark.parametrize("missing", ["book", "chromium"])
def test_browser_test_skips_locally_and_fails_under_ci(tmp_path, missing):
    html = tmp_path / "html"
    html.mkdir()
    extra = {"RL4LMT_BOOK_HTML": str(html), "RL4LMT_CHROMIUM": str(tmp_path / "no-chromium")}
    if missing == "chromium":
        (html / "index.html").write_text("<html><body>stub</body></html>")
    reason = "BOOK NOT BUILT" if missing == "book" else "CHROMIUM NOT INSTALLED"
    args = ["-x", str(ROOT / "tests" / "test_browser.py"), "-k", "test_page_renders_offline"]

    local = _pytest(args, ci=False, **extra)
    assert local.returncode == 0 and "skipped" in local.stdout and "failed" not in local.stdout, local.stdout[-3000:]
    assert reason in local.stdout, local.stdout[-3000:]

    ci = _pytest(args, ci=True, **extra)
    summary = ci.stdout.strip().splitlines()[-1]
    assert ci.returncode == 1, ci.stdout[-3000:]
    # A fixture's skip happens at set-up, which pytest counts as an error: the run fails either way.
    assert ("1 error" in summary or "1 failed" in summary) and "skipped" not in summary, ci.stdout[-3000:]
    assert reason in ci.stdout and "skipped under CI" in ci.stdout, ci.stdout[-3000:]


@pytest.mark.parametrize("module", ["test_install.py", "test_browser.py", "test_assignments.py"])
def test_any_skip_in_the_reader_tests_fails_under_ci(tmp_path, module):
    """Whatever the prerequisite (a package, notebooks, git), a skip in these modules fails in CI."""
    shutil.copy2(ROOT / "tests" / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / module).write_text(
        "import pytest\n\n"
        "def test_needs_something():\n"
        "    pytest.skip('PREREQUISITE MISSING: something this test needs')\n\n"
        "@pytest.mark.xfail(reason='a known failure stays an xfail')\n"
        "def test_known_failure():\n"
        "    assert False\n")
    (tmp_path / "test_other.py").write_text(
        "import pytest\n\n"
        "def test_optional():\n"
        "    pytest.skip('an ordinary skip elsewhere stays a skip')\n")
    args = ["--rootdir", str(tmp_path), "-c", os.devnull, str(tmp_path)]

    local = _pytest(args, ci=False, cwd=tmp_path)
    assert local.returncode == 0, local.stdout[-3000:]
    assert "2 skipped, 1 xfailed" in local.stdout, local.stdout[-3000:]

    ci = _pytest(args, ci=True, cwd=tmp_path)
    assert ci.returncode == 1, ci.stdout[-3000:]
    assert "1 failed, 1 skipped, 1 xfailed" in ci.stdout, ci.stdout[-3000:]
    assert "PREREQUISITE MISSING" in ci.stdout and "skipped under CI" in ci.stdout, ci.stdout[-3000:]


# --- lint: ruff, configured in pyproject.toml, run by `make test` ----------------------------

def test_make_test_runs_the_linter_first():
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    out = subprocess.run(["make", "-n", "--no-print-directory", "test"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, env=_env(False))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    lint = [i for i, line in enumerate(lines) if "ruff check src tests benchmarks" in line]
    tests = [i for i, line in enumerate(lines) if "-m pytest" in line]
    assert lint and tests and lint[0] < tests[0], f"`make test` must run `ruff check` before pytest:\n{out.stdout}"


def test_ruff_configuration_catches_the_usual_slips(tmp_path):
    """The project's rule set flags an unused import, unsorted imports, a mutable default, an old-style
    import, a line over 120 columns; a line of exactly 120 columns passes."""
    import json

    source = tmp_path / "sample.py"
    long_ok = "x = '" + "a" * 114 + "'"
    assert len(long_ok) == 120
    source.write_text(
        "import sys\nimport os\nfrom typing import Sequence\n\n\n"
        "def f(a=[]) -> Sequence:\n    return a + [os.sep]\n\n\n"
        f"{long_ok}\n" + "y = '" + "b" * 115 + "'\n")
    out = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--config", str(ROOT / "pyproject.toml"),
                          "--output-format", "json", str(source)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stdout + out.stderr
    found = {(d["code"], d["location"]["row"]) for d in json.loads(out.stdout)}
    codes = {code for code, _ in found}
    assert {"F401", "I001", "B006", "UP035", "E501"} <= codes, found
    assert ("E501", 10) not in found and ("E501", 11) in found, found
