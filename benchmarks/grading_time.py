"""Autograding time per submission against the notebook's own run time, and a class in parallel.

    .venv/bin/python benchmarks/grading_time.py [ASSIGNMENT ...] [--class-size N] [--jobs J]

For each assignment (default: all in solutions/): a throw-away course is built and released with
nbgrader; then

- *own*: the solved notebook executed once by nbclient in a fresh kernel (what a student waits for);
- *autograde*: ``nbgrader autograde ASSIGNMENT --student s`` for that one submission, sequentially
  (process start, repair, execution under limits, gradebook writes);
- *class*: N copies of the submission graded with ``python -m rl4lmt.grading grade -j J``
  (wall time / N = time per submission when the class is graded on all cores).

The goal: autograde <= 1.5 x own. Results to stdout and benchmarks/results/grading_time.json.
"""
import argparse
import json
import os
import pathlib
import sys
import tempfile
import time

import nbformat
from nbclient import NotebookClient

from rl4lmt.grading.cli import _nbgrader, grade
from rl4lmt.grading.course import assignments, build_course, solved_from_master, submit

ROOT = pathlib.Path(__file__).resolve().parents[1]


def own_time(nb, folder: pathlib.Path) -> float:
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(folder)}})
    t = time.perf_counter()
    client.execute()
    return time.perf_counter() - t


def bench(name: str, class_size: int, jobs: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        course = build_course(pathlib.Path(tmp) / "course", [name], ROOT)
        master = nbformat.read(ROOT / "solutions" / name / f"{name}.ipynb", as_version=4)
        release = nbformat.read(course / "exercises" / name / f"{name}.ipynb", as_version=4)
        solved = solved_from_master(master, release)
        own = own_time(solved, course / "exercises" / name)
        submit(course, "one", name, solved)
        t = time.perf_counter()
        proc = _nbgrader(["autograde", name, "--student", "one", "--force"], course)
        single = time.perf_counter() - t
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-2000:])
        for i in range(class_size):
            submit(course, f"s{i:02d}", name, solved)
        t = time.perf_counter()
        results = grade(name, course, jobs=jobs, students=[f"s{i:02d}" for i in range(class_size)])
        wall = time.perf_counter() - t
    return {"assignment": name, "own_s": round(own, 1), "autograde_s": round(single, 1),
            "ratio": round(single / own, 2), "class_size": class_size, "jobs": jobs,
            "class_wall_s": round(wall, 1), "per_submission_in_class_s": round(wall / class_size, 1),
            "all_ok": all(r["ok"] for r in results)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("names", nargs="*")
    ap.add_argument("--class-size", type=int, default=4)
    ap.add_argument("--jobs", type=int, default=os.cpu_count())
    args = ap.parse_args()
    os.environ.update(HF_HUB_OFFLINE="1", MPLBACKEND="Agg")
    rows = [bench(n, args.class_size, args.jobs) for n in (args.names or assignments(ROOT))]
    print(f"{'assignment':24s} {'own s':>7s} {'autograde s':>12s} {'ratio':>6s} {'class of N, per sub s':>22s}")
    for r in rows:
        print(f"{r['assignment']:24s} {r['own_s']:7.1f} {r['autograde_s']:12.1f} {r['ratio']:6.2f} "
              f"{r['per_submission_in_class_s']:15.1f} (N={r['class_size']}, j={r['jobs']})")
    out = ROOT / "benchmarks" / "results" / "grading_time.json"
    out.parent.mkdir(exist_ok=True)
    # merge with earlier runs (one row per assignment, the newest wins)
    old = json.loads(out.read_text())["rows"] if out.exists() else []
    merged = {r["assignment"]: r for r in old + rows}
    out.write_text(json.dumps({"machine_cpus": os.cpu_count(), "python": sys.version.split()[0],
                               "load_average_1min": os.getloadavg()[0], "rows": list(merged.values())}, indent=1))


if __name__ == "__main__":
    main()
