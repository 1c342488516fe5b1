"""``python -m rl4lmt.grading``: what plain nbgrader cannot do.

    python -m rl4lmt.grading release [ASSIGNMENT ...]   # make exercises: stamp setup cells, generate releases
    python -m rl4lmt.grading grade ASSIGNMENT [-j N]    # autograde every submission in parallel, report, CSV
    python -m rl4lmt.grading report ASSIGNMENT          # the class report from the gradebook
    python -m rl4lmt.grading validate NOTEBOOK ...      # a student's check: exit status 1 on any failure

``grade`` runs plain ``nbgrader autograde ASSIGNMENT`` (configured by ``nbgrader_config.py``) for the
students in ``submitted/``, on all cores: one nbgrader process per worker for its share of the class
(nbgrader's start-up is paid once per worker), under a wall-clock limit per student past which the
whole process tree (kernel included) is killed; one broken submission never stops the class. Then it prints one line
per student and one line for the class, and writes ``grades.csv`` with ``nbgrader export``.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

__all__ = ["main", "release", "grade", "report", "class_report", "needs_review", "kill_tree"]


def _root(root: str | os.PathLike | None) -> pathlib.Path:
    """The course directory: from ``root`` (or the current directory) upwards, the folder with nbgrader_config.py."""
    from rl4lmt.grading import course_root

    if root is not None:
        path = pathlib.Path(root).resolve()
        if not (path / "nbgrader_config.py").is_file():
            raise ValueError(f"root {str(path)!r} is not a course directory (no nbgrader_config.py)")
        return path
    return course_root()


def kill_tree(pid: int, sig: int = signal.SIGKILL) -> list[int]:
    """Kill a process and everything it started, kernels included; returns the pids signalled.

    A kernel runs in a session of its own (jupyter_client starts it with ``start_new_session``),
    so killing the grader's process group alone would orphan it: the descendants are collected
    first (while their parent still lives), then each one's process group and the process itself
    are killed.
    """
    import psutil

    try:
        top = psutil.Process(pid)
        procs = [top, *top.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    own = os.getpgid(0)
    for proc in reversed(procs):  # children first: nothing gets re-parented and missed
        try:
            pgid = os.getpgid(proc.pid)
            if pgid != own:
                os.killpg(pgid, sig)
            os.kill(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
    psutil.wait_procs(procs, timeout=5)
    return [p.pid for p in procs]


def _nbgrader(args: list[str], root: pathlib.Path, env: dict | None = None, timeout: float | None = None):
    """Run ``python -m nbgrader ARGS`` in ``root``; past ``timeout`` its whole process tree is killed.

    nbgrader is started through :mod:`rl4lmt.grading.launch` (the same nbgrader without an unused
    grammar compile at import, seconds per process).
    """
    env = dict(os.environ if env is None else env)
    # nbgrader calls `alembic` (its database migrations) by name: the venv's bin must be on PATH
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    cmd = [sys.executable, "-m", "rl4lmt.grading.launch", *args]
    with subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True) as proc:  # its own process group, killed as a whole
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_tree(proc.pid)
            out, err = proc.communicate()
            raise subprocess.TimeoutExpired(cmd, timeout, output=out, stderr=err) from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _db_url(root: pathlib.Path) -> str:
    # a generous SQLite lock timeout: parallel nbgrader processes share one gradebook
    return f"sqlite:///{root / 'gradebook.db'}?timeout=120"


def release(assignments: list[str] | None = None, root=None, measure: bool = True) -> list[str]:
    """Stamp the setup cell into every master, then ``nbgrader generate_assignment --force`` each.

    With ``measure``, a master whose per-cell times (``<assignment>.timing.json``, see
    :mod:`rl4lmt.grading.timing`) are missing or older than its code is run once to measure them:
    the grader derives each cell's time limit from them.
    """
    from rl4lmt.grading.author import stamp_setup_cells
    from rl4lmt.grading.timing import master_hash, measure_master, timing_path

    root = _root(root)
    for path in stamp_setup_cells(root):
        print(f"stamped the setup cell into {path.relative_to(root)}")
    names = assignments or sorted(p.name for p in (root / "solutions").glob("ch*") if p.is_dir())
    for name in names:
        master = root / "solutions" / name / f"{name}.ipynb"
        stored = timing_path(master)
        fresh = stored.is_file() and json.loads(stored.read_text()).get("master_hash") == master_hash(master)
        if measure and master.is_file() and not fresh:
            try:
                rec = measure_master(master)
                print(f"measured {name}: {rec['total_s']:.1f} s -> {stored.relative_to(root)}")
            except Exception as exc:  # a broken master still gets released; its cells keep the ceiling
                print(f"could not measure {name} ({type(exc).__name__}: {str(exc)[:200]}); "
                      "its cells keep the ceiling limit")
        out = root / "exercises" / name
        if out.exists():
            shutil.rmtree(out)  # files removed from a master disappear from its release too
        proc = _nbgrader(["generate_assignment", name, "--force", f"--CourseDirectory.db_url={_db_url(root)}"], root)
        if proc.returncode != 0:
            raise RuntimeError(f"nbgrader generate_assignment {name} failed:\n{proc.stdout}\n{proc.stderr}")
        print(f"released {name} -> exercises/{name}")
    return names


def _grade_one(root: pathlib.Path, assignment: str, student: str, limit: float, threads: int, extra=()) -> dict:
    """``nbgrader autograde`` for one student in its own process (a retry, or ``batch=False``)."""
    res = _grade_batch(root, assignment, [student], [student], limit, threads, extra)
    return res[0]


def _autograded(root: pathlib.Path, assignment: str, student: str, since: float) -> bool:
    """Was the student's notebook executed and saved by this run? (``HardenedExecute`` records its
    incidents in the metadata at the end of execution; the sanitising pass before it does not.)"""
    folder = root / "autograded" / student / assignment
    if not folder.is_dir():
        return False
    for path in folder.glob("*.ipynb"):
        try:
            meta = json.loads(path.read_text()).get("metadata", {}).get("rl4lmt", {})
            if path.stat().st_mtime < since or "incidents" not in meta:
                return False
        except (OSError, ValueError):
            return False
    return True


def _grade_batch(root: pathlib.Path, assignment: str, chunk: list[str], everyone: list[str], limit: float,
                 threads: int, extra=()) -> list[dict]:
    """One ``nbgrader autograde`` process for the students in ``chunk`` (the others excluded).

    nbgrader grades them one after another and goes on after a failure; a student whose
    autograded notebook was not written failed. The process gets ``limit`` seconds per student.
    """
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    args = ["autograde", assignment, "--force", f"--CourseDirectory.db_url={_db_url(root)}"]
    if len(chunk) == 1:
        args += ["--student", chunk[0]]
    else:
        others = sorted(set(everyone) - set(chunk))
        if others:
            args.append(f"--CourseDirectory.student_id_exclude={','.join(others)}")
    start, wall = time.monotonic(), time.time() - 1
    try:
        proc = _nbgrader([*args, *extra], root, env=env, timeout=limit * len(chunk))
        ok_all, log = proc.returncode == 0, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        ok_all = False
        log = (f"nbgrader autograde took longer than {limit * len(chunk):.0f} s and was stopped (process tree killed)\n"
               f"{exc.stderr or ''}")
    seconds = (time.monotonic() - start) / len(chunk)
    return [{"student": s, "ok": ok_all or _autograded(root, assignment, s, wall), "seconds": seconds, "log": log,
             "batched": len(chunk) > 1} for s in chunk]


def grade(assignment: str, root=None, jobs: int | None = None, limit: float = 900.0, students=None,
          extra_args: list[str] = (), batch: bool = True) -> list[dict]:
    """Autograde every submission of ``assignment`` in parallel; returns one result per student.

    ``jobs`` workers each run ONE ``nbgrader autograde`` process for their share of the class
    (``batch``; nbgrader's start-up, a few seconds, is paid once per worker, not once per student);
    a student that failed in a batch is graded again alone, for its own log. ``limit`` is the
    wall-clock limit per student; past it the process tree is killed. ``extra_args`` go to every
    ``nbgrader autograde`` (e.g. ``--HardenedExecute.timeout=10``).
    """
    root = _root(root)
    subs = sorted(p.parent.name for p in (root / "submitted").glob(f"*/{assignment}") if p.is_dir())
    if students:
        subs = [s for s in subs if s in set(students)]
    if not subs:
        raise ValueError(f"assignment {assignment!r}: no submissions in {root / 'submitted'}/*/{assignment}")
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(subs)))
    threads = max(1, (os.cpu_count() or 1) // jobs)
    everyone = sorted(p.parent.name for p in (root / "submitted").glob(f"*/{assignment}") if p.is_dir())
    chunks = [subs[i::jobs] for i in range(jobs)] if batch else [[s] for s in subs]
    results = []
    with cf.ThreadPoolExecutor(jobs) as pool:
        futures = [pool.submit(_grade_batch, root, assignment, c, everyone, limit, threads, tuple(extra_args))
                   for c in chunks]
        for fut in cf.as_completed(futures):
            results.extend(fut.result())
    retry = [r for r in results if not r["ok"] and r["batched"]]
    if retry:  # alone, for a log of their own (and in case the batch was stopped before reaching them)
        results = [r for r in results if r["ok"]]
        with cf.ThreadPoolExecutor(jobs) as pool:
            results.extend(pool.map(lambda r: _grade_one(root, assignment, r["student"], limit, threads,
                                                         tuple(extra_args)), retry))
    for res in results:
        res.pop("batched", None)
    for res in results:
        if not res["ok"]:
            log = root / "autograded" / f"{res['student']}-{assignment}.error.log"
            log.parent.mkdir(exist_ok=True)
            log.write_text(res["log"])
            res["error_log"] = str(log)
    return sorted(results, key=lambda r: r["student"])


def needs_review(repair: dict) -> bool:
    """A repair that guessed: a cell matched by similar (fuzzy) content or by its position."""
    what = repair.get("what", "")
    return what.startswith("matched by similar content") or what.startswith("matched by position")


def class_report(assignment: str, root=None) -> tuple[list[str], str]:
    """One line per student (score, what was repaired, what crashed) and one line for the class."""
    from nbgrader.api import Gradebook, MissingEntry

    root = _root(root)
    lines, scores = [], []
    n_repaired = n_incident = n_unreadable = n_manual = n_review = 0
    with Gradebook(_db_url(root), "rl4lmt") as gb:
        a = gb.find_assignment(assignment)
        for student in sorted(s.id for s in gb.students):
            try:
                sub = gb.find_submission(assignment, student)
            except MissingEntry:
                continue
            notes = []
            for nb_path in sorted((root / "autograded" / student / assignment).glob("*.ipynb")):
                meta = json.loads(nb_path.read_text()).get("metadata", {}).get("rl4lmt", {})
                if meta.get("unreadable"):
                    n_unreadable += 1
                    notes.append("UNREADABLE (scored as the release)")
                reps = [r for r in meta.get("repairs", []) if r.get("what", "").startswith("missing")]
                fixed = [r for r in meta.get("repairs", []) if not r.get("what", "").startswith("missing")]
                if fixed:
                    n_repaired += 1
                    notes.append(f"repaired {len(fixed)}")
                guessed = [r for r in fixed if needs_review(r)]
                if guessed:  # matched by a guess, not by metadata, identical text or the functions defined
                    n_review += 1
                    notes.append("NEEDS REVIEW: " + ", ".join(f"{r['grade_id']} {r['what']}" for r in guessed))
                notes += [f"{r['grade_id']} missing" for r in reps]
                incidents = meta.get("incidents", [])
                if incidents:
                    n_incident += 1
                    notes += sorted({f"{i['what']}" for i in incidents})
            if sub.needs_manual_grade:
                n_manual += 1
                notes.append("needs manual grading")
            scores.append(sub.score)
            lines.append(f"{student}: {sub.score:g}/{a.max_score:g}" + (f"  [{'; '.join(notes)}]" if notes else ""))
    mean = sum(scores) / len(scores) if scores else float("nan")
    summary = (f"{assignment}: {len(scores)} graded, mean {mean:.2f}/{a.max_score:g}, {n_repaired} repaired, "
               f"{n_incident} with crashes/timeouts, {n_unreadable} unreadable, {n_manual} awaiting manual grading, "
               f"{n_review} need review (cells matched by similar content or position)")
    return lines, summary


def report(assignment: str, root=None) -> str:
    lines, summary = class_report(assignment, root)
    text = "\n".join(lines + [summary])
    print(text)
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rl4lmt.grading", description=__doc__.splitlines()[0])
    p.add_argument("--root", default=None, help="course directory (default: the current directory)")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("release", help="stamp setup cells and regenerate exercises/ from solutions/")
    r.add_argument("assignments", nargs="*")
    r.add_argument("--no-measure", action="store_true", help="do not run masters to measure per-cell times")
    g = sub.add_parser("grade", help="autograde a class in parallel, print the report, export grades.csv")
    g.add_argument("assignment")
    g.add_argument("-j", "--jobs", type=int, default=None, help="parallel graders (default: all cores)")
    g.add_argument("--limit", type=float, default=900.0, help="wall-clock limit per student in s")
    g.add_argument("--student", action="append", help="grade only these students")
    g.add_argument("nbgrader_args", nargs="*",
                   help="extra nbgrader options after --, e.g. -- --HardenedExecute.timeout=60")
    rp = sub.add_parser("report", help="print the class report")
    rp.add_argument("assignment")
    v = sub.add_parser("validate", help="run notebooks like the grader; exit 1 when a test fails")
    v.add_argument("notebooks", nargs="+")
    args = p.parse_args(argv)
    if args.cmd == "validate":
        from rl4lmt.grading.validate import validate_and_report

        return 0 if all([validate_and_report(nb) for nb in args.notebooks]) else 1
    root = _root(args.root)
    if args.cmd == "release":
        release(args.assignments, root, measure=not args.no_measure)
        return 0
    if args.cmd == "grade":
        start = time.monotonic()
        results = grade(args.assignment, root, args.jobs, args.limit, args.student, args.nbgrader_args)
        for res in results:
            if not res["ok"]:
                print(f"{res['student']}: nbgrader reported an error, see {res.get('error_log')}")
        report(args.assignment, root)
        proc = _nbgrader(["export", f"--CourseDirectory.db_url={_db_url(root)}"], root)
        print(f"graded {len(results)} submissions in {time.monotonic() - start:.0f} s; "
              + ("grades.csv written" if proc.returncode == 0 else f"export failed: {proc.stderr[-500:]}"))
        return 0 if all(r["ok"] for r in results) and proc.returncode == 0 else 1
    report(args.assignment, root)
    return 0
