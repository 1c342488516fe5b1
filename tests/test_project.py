"""The project's own files agree with each other: one set of dependencies, one set of pins, one command.

pyproject.toml states the ranges (dependencies + the ``dev`` extra), constraints.txt pins the
tested versions (``pip install -c``), environment.yml mirrors both for conda users, and CI runs
``make test``, which builds the book and runs the browser and plain-install tests.
"""
from __future__ import annotations

import ast
import importlib.metadata
import pathlib
import re
import sys
import tomllib

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = pathlib.Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
REQUIREMENTS = [Requirement(r) for r in PROJECT["dependencies"] + PROJECT["optional-dependencies"]["dev"]]


def constraints() -> dict[str, tuple[str, str]]:
    """constraints.txt as {canonical name: (name as written, pinned version)}."""
    pins: dict[str, tuple[str, str]] = {}
    for number, line in enumerate((ROOT / "constraints.txt").read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!-]+)", line)
        assert m, f"constraints.txt:{number}: {line!r} is not a 'name==version' pin"
        key = canonicalize_name(m.group(1))
        assert key not in pins, f"constraints.txt:{number}: {m.group(1)} is pinned twice"
        pins[key] = (m.group(1), m.group(2))
    return pins


def environment_pins() -> tuple[dict[str, str], list, str]:
    """environment.yml's pip section as {canonical name: version}, its other entries, python."""
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python"))
    pins, others = {}, []
    for entry in pip_section:
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", entry)
        if m:
            key = canonicalize_name(m.group(1))
            assert key not in pins, f"environment.yml lists {m.group(1)} twice"
            pins[key] = m.group(2)
        else:
            others.append(entry)
    return pins, others, python


def test_every_dependency_is_pinned_within_its_range():
    pins = constraints()
    problems = []
    for req in REQUIREMENTS:
        key = canonicalize_name(req.name)
        if key not in pins:
            problems.append(f"{req.name}: in pyproject.toml but not pinned in constraints.txt")
        elif not req.specifier.contains(Version(pins[key][1]), prereleases=True):
            problems.append(f"{req.name}: pinned {pins[key][1]}, outside pyproject's range {req.specifier}")
    assert not problems, "\n".join(problems)


def test_environment_yml_mirrors_pyproject_and_constraints():
    pins = constraints()
    env_pins, others, python = environment_pins()
    wanted = {canonicalize_name(r.name) for r in REQUIREMENTS}
    assert set(env_pins) == wanted, (
        f"environment.yml's packages differ from pyproject's dependencies + dev extra: "
        f"missing {sorted(wanted - set(env_pins))}, extra {sorted(set(env_pins) - wanted)}")
    different = {k: (v, pins.get(k, (k, None))[1]) for k, v in env_pins.items() if pins.get(k, (k, None))[1] != v}
    assert not different, f"environment.yml pin != constraints.txt pin (env, constraints): {different}"
    # the same constraints as the Makefile's `pip install -c constraints.txt` (conda runs pip from
    # the folder of environment.yml, so the relative path is the repository's file)
    assert others == ["-c constraints.txt", "-e ."], (
        f"environment.yml's pip section should end with '-c constraints.txt' and '-e .', got {others}")
    version = python.split("=", 1)[1] if "=" in python else None
    assert version and SpecifierSet(PROJECT["requires-python"]).contains(Version(version)), (
        f"environment.yml's {python!r} does not satisfy requires-python {PROJECT['requires-python']}")


def _imported_distributions(paths) -> dict[str, set[str]]:
    """{distribution: files} for every third-party module imported (anywhere, lazily too) in ``paths``."""
    owners = importlib.metadata.packages_distributions()
    local = {"rl4lmt", "__future__"} | {p.stem for p in (ROOT / "tests").glob("*.py")}  # ours, not distributions
    found: dict[str, set[str]] = {}
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top in local:
                    continue
                dists = owners.get(top) or [f"<no installed distribution provides {top!r}>"]
                for dist in dists:
                    found.setdefault(canonicalize_name(dist), set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_imported_package_is_declared():
    """What the code imports directly is a declared dependency, not a transitive accident: the
    package's student-facing modules need only the main dependencies; the grading tooling, the book's
    page helpers (rl4lmt.book), the tests and the benchmarks may use the dev extra too."""
    main = {canonicalize_name(Requirement(r).name) for r in PROJECT["dependencies"]}
    dev = {canonicalize_name(Requirement(r).name) for r in PROJECT["optional-dependencies"]["dev"]}
    book_tools = [ROOT / "src" / "rl4lmt" / "book.py"]  # helpers for the book's pages (myst-nb's glue)
    src = [p for p in (ROOT / "src" / "rl4lmt").rglob("*.py")
           if "grading" not in p.relative_to(ROOT / "src").parts and p not in book_tools]
    tooling = sorted((ROOT / "src" / "rl4lmt" / "grading").rglob("*.py"))
    tooling += book_tools
    tooling += sorted((ROOT / "tests").rglob("*.py")) + sorted((ROOT / "benchmarks").rglob("*.py"))
    problems = [f"{d} (imported by {sorted(files)[:3]}) is not a main dependency"
                for d, files in _imported_distributions(src).items() if d not in main]
    problems += [f"{d} (imported by {sorted(files)[:3]}) is not declared (main or dev)"
                 for d, files in _imported_distributions(tooling).items() if d not in main | dev]
    assert not problems, "\n".join(sorted(problems))


def test_jupyter_book_stays_on_version_1():
    req = next(r for r in REQUIREMENTS if canonicalize_name(r.name) == "jupyter-book")
    assert req.specifier == SpecifierSet(">=1,<2"), f"jupyter-book constraint is {req.specifier}, expected >=1,<2"


def test_installed_versions_are_the_pinned_ones():
    """The environment the suite runs in is the tested one (catches an un-pinned pip install)."""
    pins = constraints()
    wrong = {}
    for req in REQUIREMENTS:
        name, pinned = pins[canonicalize_name(req.name)]
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            wrong[name] = (pinned, "not installed")
            continue
        # "==2.13.0" accepts the local build "2.13.0+cpu", as pip does.
        if not SpecifierSet(f"=={pinned}").contains(Version(installed), prereleases=True):
            wrong[name] = (pinned, installed)
    assert not wrong, f"installed versions differ from constraints.txt (pinned, installed): {wrong}"


def test_ci_runs_make_test():
    run = (ROOT / ".ci" / "run").read_text()
    commands = [line.split("#", 1)[0].strip() for line in run.splitlines()]
    assert any(re.match(r"^(exec\s+)?make\s+(\S+\s+)*test\b", c) for c in commands), (
        ".ci/run must call `make test` (the one test command)")
    makefile = (ROOT / "Makefile").read_text()
    m = re.search(r"^test:([^\n]*)\n((?:\t[^\n]*\n)+)", makefile, flags=re.M)
    assert m, "the Makefile has no `test` target"
    assert "book" in m.group(1).split(), "`make test` must build the book first (browser test reads it)"
    assert "chromium" in m.group(1).split(), "`make test` must install Chromium where missing (browser test)"
    assert "pytest" in m.group(2), "`make test` must run pytest"


@pytest.mark.parametrize("name", ["test_browser.py", "test_install.py"])
def test_reader_tests_are_collected_by_make_test(name):
    """The browser and plain-install tests are in pytest's testpaths, not deselected by default."""
    opts = PYPROJECT["tool"]["pytest"]["ini_options"]
    assert (ROOT / "tests" / name).is_file()
    assert "tests" in opts["testpaths"]
    assert not re.search(r"-m\s+['\"]?not\s+slow|--deselect|--ignore", opts.get("addopts", "")), (
        f"pytest's default options deselect tests: {opts.get('addopts')}")


def test_benchmarks_readme_lists_every_script_and_nothing_else():
    listed = set(re.findall(r"^\| `([\w]+\.py)` \|", (ROOT / "benchmarks" / "README.md").read_text(), flags=re.M))
    scripts = {p.name for p in (ROOT / "benchmarks").glob("*.py")}
    assert listed == scripts, (
        f"benchmarks/README.md: missing {sorted(scripts - listed)}, stale {sorted(listed - scripts)}")


def test_module_lists_name_modules_that_exist():
    """The package's docstring and the README's layout table name only modules that exist."""
    package = ROOT / "src" / "rl4lmt"
    doc = (package / "__init__.py").read_text().split('"""')[1]
    named = set(re.findall(r"``rl4lmt\.(\w+)``", doc))
    row = next(line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("| `src/rl4lmt/`"))
    named |= set(re.findall(r"`(\w+)`", row.split("|")[2]))
    missing = sorted(m for m in named if not ((package / f"{m}.py").is_file() or (package / m).is_dir()))
    assert not missing, f"named as rl4lmt modules but missing from src/rl4lmt: {missing}"
    assert len(named) >= 10, named


def test_notebook_times_merges_rows_instead_of_overwriting(tmp_path):
    """`notebook_times.py --only chapters ch05` must not drop the other notebooks' measurements."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("notebook_times", ROOT / "benchmarks" / "notebook_times.py")
    nt = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(nt)
    path = tmp_path / "times.json"
    row = lambda kind, name, s: {"kind": kind, "name": name, "seconds": s}  # noqa: E731
    nt.save([row("chapter", "ch00", 1.0), row("solution", "ch00", 2.0)], path)
    nt.save([row("chapter", "ch05", 3.0), row("chapter", "ch00", 4.0)], path)
    import json

    got = {(r["kind"], r["name"]): r["seconds"] for r in json.loads(path.read_text())["results"]}
    assert got == {("chapter", "ch00"): 4.0, ("solution", "ch00"): 2.0, ("chapter", "ch05"): 3.0}
    path.write_text("not json")  # a damaged file is replaced, not fatal
    nt.save([row("chapter", "ch01", 5.0)], path)
    assert [r["name"] for r in json.loads(path.read_text())["results"]] == ["ch01"]
