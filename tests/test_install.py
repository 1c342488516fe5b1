"""The package as a student on Colab meets it: a plain ``pip install``, one notebook, no repository.

The wheel is built from the sources, installed with its dependencies (``pip install -c
constraints.txt``) into a fresh virtual environment in a temporary folder outside the
repository, and everything below runs with that interpreter, from temporary folders, with
``CUDA_VISIBLE_DEVICES=""`` and an empty Hugging Face cache:

- ``rl4lmt`` is imported from that environment (not from the checkout) and all its
  student-facing modules import there;
- the shipped tiny model loads from the installed package and is the trained one;
- every solution notebook ``solutions/*/*.ipynb`` runs to the end, copied alone to a
  temporary folder, on a kernel of that environment;
- the exercises' setup cell installs nothing where ``rl4lmt`` is importable, and on a machine
  without it (Colab) installs exactly the package of the course repository named in
  ``_config.yml`` (git's ``insteadOf`` sends that address to this checkout: no network).

The fresh install takes a few minutes (mostly torch and transformers from pip's cache or the
registry); the venv is deleted afterwards. Static checks at the end: no module opens files by
paths relative to the repository, and no chapter or solution hard-codes a device.
"""
from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time

import nbformat
import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
SOLUTIONS = sorted(ROOT.glob("solutions/*/*.ipynb"))
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
REPO_URL = CONFIG["repository"]["url"].rstrip("/")
MARK = "RL4LMT_PLAIN_INSTALL_REPORT "

# Instructor-side tooling: runs in a checkout with the dev extra (nbgrader), never on Colab.
INSTRUCTOR_ONLY = ("rl4lmt.grading.",)


def _run(cmd, **kwargs) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if out.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed ({out.returncode}):\n"
                             f"{out.stdout[-3000:]}\n{out.stderr[-5000:]}")
    return out


class PlainEnv:
    """A fresh virtual environment outside the repository with the wheel installed."""

    def __init__(self, base: pathlib.Path):
        self.base = base
        self.venv = base / "venv"
        self.python = self.venv / "bin" / "python"
        self.kernels = base / "jupyter"
        self.timings: dict[str, float] = {}

    def env(self, **extra: str) -> dict[str, str]:
        """The environment a student's kernel sees: CPU only, offline, no checkout on the path."""
        env = {k: v for k, v in os.environ.items()
               if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "JUPYTER_PATH")}
        env.update(
            PATH=f"{self.venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
            CUDA_VISIBLE_DEVICES="",
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            HF_DATASETS_OFFLINE="1",
            HF_HOME=str(self.base / "hf-home"),  # empty: nothing may come from a hub cache
            RL4LMT_CACHE=str(self.base / "rl4lmt-cache"),  # empty, as on a new Colab machine
            MPLBACKEND="Agg",
            TOKENIZERS_PARALLELISM="false",
            PYDEVD_DISABLE_FILE_VALIDATION="1",
        )
        env.update(extra)
        return env

    def python_run(self, code: str, cwd: pathlib.Path, **extra: str) -> dict:
        """Run ``code`` with the environment's interpreter; it prints MARK + a JSON report."""
        out = _run([str(self.python), "-c", code], cwd=cwd, env=self.env(**extra), timeout=600)
        lines = [line for line in out.stdout.splitlines() if line.startswith(MARK)]
        assert lines, f"no report printed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
        return json.loads(lines[-1][len(MARK):])

    def execute(self, nb: nbformat.NotebookNode, cwd: pathlib.Path, timeout: int = 600, **extra: str):
        """Execute a notebook on a kernel of this environment (nbclient), in folder ``cwd``."""
        from jupyter_client.kernelspec import KernelSpecManager
        from jupyter_client.manager import KernelManager
        from nbclient import NotebookClient

        ksm = KernelSpecManager(kernel_dirs=[str(self.kernels / "share" / "jupyter" / "kernels")])
        km = KernelManager(kernel_name="rl4lmt-plain", kernel_spec_manager=ksm)
        client = NotebookClient(nb, km=km, timeout=timeout, kernel_name="rl4lmt-plain",
                                resources={"metadata": {"path": str(cwd)}})
        try:
            client.execute(env=self.env(**extra))
        finally:  # nbclient leaves a kernel manager it was given running
            if km.has_kernel:
                km.shutdown_kernel(now=True)
        return nb


def _report_cell() -> nbformat.NotebookNode:
    """A last cell that tells where rl4lmt and the computation were."""
    return nbformat.v4.new_code_cell(
        "import json as _j, os as _o, sys as _s, rl4lmt as _r, torch as _t\n"
        f"print({MARK!r} + _j.dumps({{'file': _r.__file__, 'cwd': _o.getcwd(), 'python': _s.executable,"
        " 'device': str(_r.get_device()), 'cuda': _t.cuda.is_available()}))")


def _report(nb: nbformat.NotebookNode) -> dict:
    for cell in reversed(nb.cells):
        for output in cell.get("outputs", []):
            for line in output.get("text", "").splitlines():
                if line.startswith(MARK):
                    return json.loads(line[len(MARK):])
    raise AssertionError("the report cell printed nothing")


def _inside(path: str | pathlib.Path, folder: pathlib.Path) -> bool:
    return pathlib.Path(path).resolve().is_relative_to(folder.resolve())


@pytest.fixture(scope="module")
def plain() -> PlainEnv:
    base = pathlib.Path(tempfile.mkdtemp(prefix="rl4lmt-plain-"))
    assert not _inside(base, ROOT), "the plain install must live outside the repository"
    env = PlainEnv(base)
    try:
        t0 = time.perf_counter()
        # The wheel, built from a copy of the sources (setuptools leaves build/ and *.egg-info
        # next to the sources it builds; the checkout stays clean).
        src = base / "src-copy"
        src.mkdir()
        for name in ("pyproject.toml", "README.md", "LICENSE", "MANIFEST.in", "setup.py", "setup.cfg"):
            if (ROOT / name).is_file():
                shutil.copy2(ROOT / name, src / name)
        shutil.copytree(ROOT / "src", src / "src",
                        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc"))
        _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
              "--no-deps", "-w", str(base / "dist"), str(src)], cwd=base)
        wheels = list((base / "dist").glob("rl4lmt-*.whl"))
        assert len(wheels) == 1, wheels
        env.timings["build wheel"] = time.perf_counter() - t0

        # A fresh venv (no system site-packages), the wheel + its dependencies at the tested
        # versions, and ipykernel (which Colab has) to run notebooks on it.
        t0 = time.perf_counter()
        _run([sys.executable, "-m", "venv", str(env.venv)], cwd=base)
        # --no-compile: Python compiles what a notebook imports when it imports it; compiling
        # all of torch and transformers up front took a good part of the install time.
        _run([str(env.python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
              "--no-compile", "-c", str(ROOT / "constraints.txt"), str(wheels[0]), "ipykernel"],
             cwd=base, env=env.env(), timeout=1800)
        _run([str(env.python), "-m", "ipykernel", "install", "--prefix", str(env.kernels),
              "--name", "rl4lmt-plain", "--display-name", "rl4lmt (plain install)"], cwd=base, env=env.env())
        env.timings["fresh venv + pip install"] = time.perf_counter() - t0
        yield env
    finally:
        print(f"\nplain install in {base}: " + ", ".join(f"{k} {v:.0f} s" for k, v in env.timings.items()))
        # Deleting 1.6 GB takes minutes on a busy disk: let rm do it while the suite goes on.
        subprocess.Popen(["rm", "-rf", str(base)], start_new_session=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_installed_package_is_used_and_imports(plain, tmp_path):
    report = plain.python_run(
        "import importlib, json, pkgutil, sys, rl4lmt\n"
        f"skip = {INSTRUCTOR_ONLY!r}\n"
        "names = [m.name for m in pkgutil.walk_packages(rl4lmt.__path__, 'rl4lmt.')]\n"
        "errors = {}\n"
        "for name in names:\n"
        "    if name.startswith(skip):\n"
        "        continue\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as exc:\n"
        "        errors[name] = repr(exc)\n"
        f"print({MARK!r} + json.dumps({{'file': rl4lmt.__file__, 'path': sys.path, 'modules': names,"
        " 'errors': errors, 'device': str(rl4lmt.get_device())}))",
        cwd=tmp_path)
    assert _inside(report["file"], plain.venv), f"rl4lmt imported from {report['file']}, not from the fresh venv"
    assert not any(_inside(p, ROOT) for p in report["path"] if p), f"the checkout is on sys.path: {report['path']}"
    assert not report["errors"], f"modules that fail to import in a plain install: {report['errors']}"
    assert report["device"] == "cpu", "with CUDA_VISIBLE_DEVICES='' get_device() must give the CPU"
    assert "rl4lmt.world" in report["modules"] and "rl4lmt.lm" in report["modules"], report["modules"]


def test_shipped_model_loads_from_the_installed_package(plain, tmp_path):
    report = plain.python_run(
        "import json, pathlib, torch, rl4lmt\n"
        "from rl4lmt import zoo, world, lm\n"
        "rl4lmt.set_seed(0)\n"
        "model, tok = zoo.load('tiny-reviews')\n"
        "w = world.TinyReviews(seed=0)\n"
        "texts = w.sample(200, seed=123)\n"
        "with torch.no_grad():\n"
        "    lp = lm.sequence_logprob(model, tok, texts)\n"
        "events = sum(w.num_events(t) for t in texts)\n"
        "pkg = pathlib.Path(rl4lmt.__file__).parent\n"
        "weights = [str(p) for p in pkg.rglob('*.safetensors')]\n"
        f"print({MARK!r} + json.dumps({{'weights': weights, 'model_ce': float(-lp.sum()) / events,"
        " 'world_ce': w.cross_entropy(texts), 'vocab': len(w.vocab),"
        " 'device': str(next(model.parameters()).device)}))",
        cwd=tmp_path)
    assert report["weights"], "no *.safetensors checkpoint inside the installed package"
    assert all(_inside(p, plain.venv) for p in report["weights"]), report["weights"]
    assert report["device"] == "cpu", report
    # The trained model is close to the world's own cross-entropy (the floor); an untrained one
    # would be near log(|vocab|). This tells the shipped weights were loaded, not a fresh init.
    import math
    assert report["model_ce"] < report["world_ce"] + 0.5 < math.log(report["vocab"]), (
        f"cross-entropy of the shipped model on 200 world samples: {report['model_ce']:.3f} nats, "
        f"the world's own {report['world_ce']:.3f}, uniform {math.log(report['vocab']):.3f}")


@pytest.mark.slow
@pytest.mark.parametrize("master", SOLUTIONS, ids=[p.parent.name for p in SOLUTIONS])
def test_solution_notebook_runs_from_a_plain_install(plain, master, tmp_path):
    # The notebook alone in an empty folder, as a student downloads it (no repository around).
    work = tmp_path / master.parent.name
    work.mkdir()
    nb = nbformat.read(master, as_version=4)
    nb.cells.append(_report_cell())
    t0 = time.perf_counter()
    plain.execute(nb, cwd=work)
    seconds = time.perf_counter() - t0
    report = _report(nb)
    assert _inside(report["file"], plain.venv), f"rl4lmt came from {report['file']}, not the fresh venv"
    assert pathlib.Path(report["cwd"]).resolve() == work.resolve()
    assert report["device"] == "cpu" and not report["cuda"], report
    print(f"{master.relative_to(ROOT)}: {seconds:.1f} s on the plain install")


def _setup_cells() -> dict[str, str]:
    """The first cell of every exercise (release) notebook, else of every master."""
    notebooks = sorted(ROOT.glob("exercises/*/*.ipynb")) or SOLUTIONS
    cells = {}
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        assert nb.cells and nb.cells[0].cell_type == "code", f"{path}: the first cell must be the setup cell"
        cells[str(path.relative_to(ROOT))] = nb.cells[0].source
    return cells


def test_setup_cell_installs_exactly_the_course_package():
    cells = _setup_cells()
    if not cells:
        pytest.skip("NO ASSIGNMENT NOTEBOOKS YET: nothing to check (solutions/*/*.ipynb is empty)")
    for path, source in cells.items():
        assert f"git+{REPO_URL}" in source, (
            f"{path}: the setup cell must pip-install the course repository git+{REPO_URL} "
            "(from _config.yml's repository.url; regenerate with the grading helper)")
    assert len(set(cells.values())) == 1, "the setup cell differs between assignments: " + ", ".join(cells)


def _setup_probe(setup_source: str) -> nbformat.NotebookNode:
    """The setup cell between two probe cells: which processes it started, which packages changed."""
    before = nbformat.v4.new_code_cell(
        "import sys as _s, importlib.metadata as _md\n"
        "_SPAWNED = []\n"
        "_s.addaudithook(lambda ev, args: _SPAWNED.append((ev, repr(args)[:300]))"
        " if ev in ('subprocess.Popen', 'os.system', 'os.posix_spawn', 'os.exec', 'os.spawn') else None)\n"
        "_BEFORE = {(d.metadata['Name'], d.version) for d in _md.distributions()}")
    after = nbformat.v4.new_code_cell(
        "import json as _j, rl4lmt as _r\n"
        "_AFTER = {(d.metadata['Name'], d.version) for d in _md.distributions()}\n"
        "_dist = _md.distribution('rl4lmt')\n"
        f"print({MARK!r} + _j.dumps({{'spawned': _SPAWNED, 'changed': sorted(_AFTER ^ _BEFORE),"
        " 'file': _r.__file__, 'device': str(_r.get_device()),"
        " 'direct_url': _dist.read_text('direct_url.json')}))")
    return nbformat.v4.new_notebook(cells=[before, nbformat.v4.new_code_cell(setup_source), after])


def _setup_source() -> str:
    cells = _setup_cells()
    if cells:
        return next(iter(cells.values()))
    from rl4lmt.grading import setup_cell_source  # no notebooks yet: the generator's output

    return setup_cell_source(REPO_URL)


def test_setup_cell_does_nothing_where_rl4lmt_is_importable(plain, tmp_path):
    nb = plain.execute(_setup_probe(_setup_source()), cwd=tmp_path, timeout=120)
    report = _report(nb)
    installers = [a for _, a in report["spawned"] if re.search(r"\bpip\b|install|\bgit\b|conda|apt", a)]
    assert installers == [], f"the setup cell ran an installer although rl4lmt is installed: {installers}"
    assert report["changed"] == [], f"the setup cell changed installed packages: {report['changed']}"
    assert _inside(report["file"], plain.venv) and report["device"] == "cpu", report


def test_setup_cell_on_colab_installs_the_course_repository(plain, tmp_path):
    """Without rl4lmt (Colab), the setup cell installs it from the repository in _config.yml.

    git's ``url.<checkout>.insteadOf=<repository url>`` makes that address clone this checkout
    (its committed HEAD), so the test needs no network. Runs last: it reinstalls rl4lmt.
    """
    _run([str(plain.python), "-m", "pip", "uninstall", "--quiet", "--yes", "rl4lmt"], cwd=tmp_path, env=plain.env())
    gitconfig = tmp_path / "gitconfig"
    gitconfig.write_text(f'[url "{ROOT.as_uri()}"]\n\tinsteadOf = {REPO_URL}\n[safe]\n\tdirectory = *\n')
    head = _run(["git", "rev-parse", "HEAD"], cwd=ROOT).stdout.strip()
    nb = plain.execute(_setup_probe(_setup_source()), cwd=tmp_path, timeout=600,
                       GIT_CONFIG_GLOBAL=str(gitconfig), GIT_CONFIG_NOSYSTEM="1", GIT_TERMINAL_PROMPT="0")
    report = _report(nb)
    assert any("pip" in args for _, args in report["spawned"]), f"no pip install was started: {report['spawned']}"
    assert [name for name, _ in report["changed"]] == ["rl4lmt"], f"packages changed: {report['changed']}"
    assert _inside(report["file"], plain.venv), report["file"]
    direct = json.loads(report["direct_url"] or "{}")
    assert direct.get("url", "").rstrip("/").removesuffix(".git") == REPO_URL, direct
    assert direct.get("vcs_info", {}).get("commit_id") == head, (direct, head)


# --- static checks: what a plain install cannot see --------------------------------------

# Ways a module could reach into the checkout instead of its own package data.
REPO_RELATIVE = re.compile(
    r"parents\[[2-9]\]|\.parent\.parent\.parent|[\"']\.\./|_config\.yml|_toc\.yml|shared/"
    r"|[\"'](?:book|solutions|exercises|tests|benchmarks)/")


def test_no_module_reads_files_relative_to_the_repository():
    offenders = []
    for path in sorted((ROOT / "src" / "rl4lmt").rglob("*.py")):
        rel = path.relative_to(ROOT / "src")
        module = ".".join(rel.with_suffix("").parts)
        if module.startswith(INSTRUCTOR_ONLY) or module == "rl4lmt.grading":
            continue  # instructor tooling: runs in a checkout by design (generation, grading)
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if REPO_RELATIVE.search(code):
                offenders.append(f"{rel}:{number}: {line.strip()}")
    assert not offenders, ("modules that read files by paths relative to the repository (ship the "
                           "file as package data and use importlib.resources):\n" + "\n".join(offenders))


HARD_CODED_DEVICE = re.compile(r"""["']cuda(?::\d+)?["']|\.cuda\(\)|device\s*=\s*["']cpu["']""")


def test_chapters_and_solutions_use_the_device_helper():
    """Devices come from rl4lmt.get_device()/to_device(), never a hard-coded "cuda" or "cpu"."""
    offenders = []
    for path in sorted(ROOT.glob("book/*.md")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if HARD_CODED_DEVICE.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    for path in SOLUTIONS:
        nb = nbformat.read(path, as_version=4)
        for index, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            for line in cell.source.splitlines():
                if HARD_CODED_DEVICE.search(line):
                    offenders.append(f"{path.relative_to(ROOT)} cell {index}: {line.strip()}")
    assert not offenders, "hard-coded devices (use rl4lmt.get_device() / rl4lmt.to_device()):\n" + "\n".join(offenders)
