"""``python -m rl4lmt.grading``: what plain nbgrader cannot do.

    python -m rl4lmt.grading release [ASSIGNMENT ...]   # make exercises: stamp setup cells, generate releases
    python -m rl4lmt.grading grade ASSIGNMENT [-j N]    # autograde every submission in parallel, report, CSV
    python -m rl4lmt.grading report ASSIGNMENT          # the class report from the gradebook
    python -m rl4lmt.grading validate NOTEBOOK ...      # a student's check: exit status 1 on any failure

``grade`` runs plain ``nbgrader autograde ASSIGNMENT --student S`` (configured by
``nbgrader_config.py``) for each student in ``submitted/``, on all cores, one process per student,
each under a wall-clock limit; one broken submission never stops the class. Then it prints one line
per student and one line for the class, and writes ``grades.csv`` with ``nbgrader export``.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

__all__ = ["main", "release", "grade", "report", "class_report"]


def _root(root: str | os.PathLike | None) -> pathlib.Path:
    """The course directory: from ``root`` (or the current directory) upwards, the folder with nbgrader_config.py."""
    from rl4lmt.grading import course_root

    if root is not None:
        path = pathlib.Path(root).resolve()
        if not (path / "nbgrader_config.py").is_file():
            raise ValueError(f"root {str(path)!r} is not a course directory (no nbgrader_config.py)")
        return path
    return course_root()


def _nbgrader(args: list[str], root: pathlib.Path, env: dict | None = None, timeout: float | None = None):
    env = dict(os.environ if env is None else env)
    # nbgrader calls `alembic` (its database migrations) by name: the venv's bin must be on PATH
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    return subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=root, env=env, timeout=timeout,
                          capture_output=True, text=True)


def _db_url(root: pathlib.Path) -> str:
    # a generous SQLite lock timeout: parallel nbgrader processes share one gradebook
    return f"sqlite:///{root / 'gradebook.db'}?timeout=120"


def release(assignments: list[str] | None = None, root=None) -> list[str]:
    """Stamp the setup cell into every master, then ``nbgrader generate_assignment --force`` each."""
    from rl4lmt.grading.author import stamp_setup_cells

    root = _root(root)
    for path in stamp_setup_cells(root):
        print(f"stamped the setup cell into {path.relative_to(root)}")
    names = assignments or sorted(p.name for p in (root / "solutions").glob("ch*") if p.is_dir())
    for name in names:
        out = root / "exercises" / name
        if out.exists():
            shutil.rmtree(out)  # files removed from a master disappear from its release too
        proc = _nbgrader(["generate_assignment", name, "--force", f"--CourseDirectory.db_url={_db_url(root)}"], root)
        if proc.returncode != 0:
            raise RuntimeError(f"nbgrader generate_assignment {name} failed:\n{proc.stdout}\n{proc.stderr}")
        print(f"released {name} -> exercises/{name}")
    return names


def _grade_one(root: pathlib.Path, assignment: str, student: str, limit: float, threads: int, extra=()) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    start = time.monotonic()
    try:
        proc = _nbgrader(["autograde", assignment, "--student", student, "--force",
                          f"--CourseDirectory.db_url={_db_url(root)}", *extra], root, env=env, timeout=limit)
        ok, log = proc.returncode == 0, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        ok, log = False, f"nbgrader autograde took longer than {limit:.0f} s and was stopped\n{exc.stderr or ''}"
    return {"student": student, "ok": ok, "seconds": time.monotonic() - start, "log": log}


def grade(assignment: str, root=None, jobs: int | None = None, limit: float = 900.0, students=None,
          extra_args: list[str] = ()) -> list[dict]:
    """Autograde every submission of ``assignment`` in parallel; returns one result per student.

    ``extra_args`` go to every ``nbgrader autograde`` (e.g. ``--HardenedExecute.timeout=10``).
    """
    root = _root(root)
    subs = sorted(p.parent.name for p in (root / "submitted").glob(f"*/{assignment}") if p.is_dir())
    if students:
        subs = [s for s in subs if s in set(students)]
    if not subs:
        raise ValueError(f"assignment {assignment!r}: no submissions in {root / 'submitted'}/*/{assignment}")
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(subs)))
    threads = max(1, (os.cpu_count() or 1) // jobs)
    results = []
    with cf.ThreadPoolExecutor(jobs) as pool:
        futures = [pool.submit(_grade_one, root, assignment, s, limit, threads, tuple(extra_args)) for s in subs]
        for fut in cf.as_completed(futures):
            res = fut.result()
            results.append(res)
            if not res["ok"]:
                log = root / "autograded" / f"{res['student']}-{assignment}.error.log"
                log.parent.mkdir(exist_ok=True)
                log.write_text(res["log"])
                res["error_log"] = str(log)
    return sorted(results, key=lambda r: r["student"])


def class_report(assignment: str, root=None) -> tuple[list[str], str]:
    """One line per student (score, what was repaired, what crashed) and one line for the class."""
    from nbgrader.api import Gradebook, MissingEntry

    root = _root(root)
    lines, scores = [], []
    n_repaired = n_incident = n_unreadable = n_manual = 0
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
               f"{n_incident} with crashes/timeouts, {n_unreadable} unreadable, {n_manual} awaiting manual grading")
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
    g = sub.add_parser("grade", help="autograde a class in parallel, print the report, export grades.csv")
    g.add_argument("assignment")
    g.add_argument("-j", "--jobs", type=int, default=None, help="parallel graders (default: all cores)")
    g.add_argument("--limit", type=float, default=900.0, help="wall-clock limit per student in s")
    g.add_argument("--student", action="append", help="grade only these students")
    g.add_argument("nbgrader_args", nargs="*", help="extra nbgrader options after --, e.g. -- --HardenedExecute.timeout=60")
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
        release(args.assignments, root)
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
