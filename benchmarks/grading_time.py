"""Autograding time per submission against the notebook's own run time, and a class in parallel.

    .venv/bin/python benchmarks/grading_time.py [ASSIGNMENT ...] [--class-size N] [--jobs J]

For each assignment (default: all in solutions/): a throw-away course is built and released with
nbgrader; then

- *own*: the solved notebook executed once by nbclient in a fresh kernel (what a student waits for);
- *autograde*: ``nbgrader autograde ASSIGNMENT --student s`` for that one submission, sequentially
  (process start, repair, execution under limits, gradebook writes);
- *per student*: N copies graded by ONE worker that starts one nbgrader process per student
  (``grade(..., jobs=1, batch=False)``, how the class was graded before): wall time / N;
- *amortised*: the same N copies graded by ONE worker running ONE nbgrader process for all of them
  (``grade(..., jobs=1)``, the default): wall time / N, nbgrader's start-up paid once;
- *class*: N copies graded with all J workers (``grade(..., jobs=J)``): wall time / N.

The goal: autograde (amortised) <= 1.5 x own. Results to stdout and benchmarks/results/grading_time.json.
"""
import argparse
import json
import os
import pathlib
import resource
import sys
import tempfile
import time

import nbformat
from nbclient import NotebookClient

from rl4lmt.grading.cli import _nbgrader, grade
from rl4lmt.grading.course import assignments, build_course, solved_from_master, submit

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _cpu() -> float:
    """CPU seconds of this process and of every finished child (kernels, nbgrader and its kernels)."""
    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def own_time(nb, folder: pathlib.Path) -> tuple[float, float]:
    """(wall s, CPU s) of running the notebook once in a fresh kernel."""
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(folder)}})
    t, c = time.perf_counter(), _cpu()
    client.execute()
    return time.perf_counter() - t, _cpu() - c


def _class(course, name, n, prefix, **kw) -> tuple[float, float, bool]:
    """(wall s, CPU s) per submission of grading n copies, and whether all were graded."""
    students = [f"{prefix}{i:02d}" for i in range(n)]
    t, c = time.perf_counter(), _cpu()
    results = grade(name, course, students=students, **kw)
    return (time.perf_counter() - t) / n, (_cpu() - c) / n, all(r["ok"] for r in results)


def bench(name: str, class_size: int, jobs: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        course = build_course(pathlib.Path(tmp) / "course", [name], ROOT)
        master = nbformat.read(ROOT / "solutions" / name / f"{name}.ipynb", as_version=4)
        release = nbformat.read(course / "exercises" / name / f"{name}.ipynb", as_version=4)
        solved = solved_from_master(master, release)
        own, own_cpu = own_time(solved, course / "exercises" / name)
        submit(course, "one", name, solved)
        t = time.perf_counter()
        proc = _nbgrader(["autograde", name, "--student", "one", "--force"], course)
        single = time.perf_counter() - t
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-2000:])
        for prefix in ("p", "b", "c"):
            for i in range(class_size):
                submit(course, f"{prefix}{i:02d}", name, solved)
        per_student, per_student_cpu, ok1 = _class(course, name, class_size, "p", jobs=1, batch=False)
        amortised, amortised_cpu, ok2 = _class(course, name, class_size, "b", jobs=1)
        in_class, _, ok3 = _class(course, name, class_size, "c", jobs=jobs)
    return {"assignment": name, "own_s": round(own, 1), "autograde_s": round(single, 1),
            "ratio": round(single / own, 2), "class_size": class_size,
            "per_student_process_s": round(per_student, 1), "per_student_process_ratio": round(per_student / own, 2),
            "amortised_s": round(amortised, 1), "amortised_ratio": round(amortised / own, 2),
            "own_cpu_s": round(own_cpu, 1), "per_student_process_cpu_ratio": round(per_student_cpu / own_cpu, 2),
            "amortised_cpu_ratio": round(amortised_cpu / own_cpu, 2),
            "jobs": jobs, "per_submission_in_class_s": round(in_class, 1), "all_ok": ok1 and ok2 and ok3}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("names", nargs="*")
    ap.add_argument("--class-size", type=int, default=4)
    ap.add_argument("--jobs", type=int, default=os.cpu_count())
    args = ap.parse_args()
    os.environ.update(HF_HUB_OFFLINE="1", MPLBACKEND="Agg")
    rows = [bench(n, args.class_size, args.jobs) for n in (args.names or assignments(ROOT))]
    print(f"{'assignment':24s} {'own s':>6s} {'one process/student s (ratio)':>30s} "
          f"{'one process/worker s (ratio)':>29s} {'class, j workers, per sub s':>28s}")
    for r in rows:
        print(f"{r['assignment']:24s} {r['own_s']:6.1f} {r['per_student_process_s']:22.1f} "
              f"({r['per_student_process_ratio']:.2f}) "
              f"{r['amortised_s']:21.1f} ({r['amortised_ratio']:.2f}) {r['per_submission_in_class_s']:20.1f} "
              f"(N={r['class_size']}, j={r['jobs']})  single autograde {r['autograde_s']:.1f} s")
        print(f"{'':24s} CPU time: own {r['own_cpu_s']:.1f} s; "
              f"one process per student {r['per_student_process_cpu_ratio']:.2f} x, "
              f"one process per worker {r['amortised_cpu_ratio']:.2f} x")
    out = ROOT / "benchmarks" / "results" / "grading_time.json"
    out.parent.mkdir(exist_ok=True)
    # merge with earlier runs (one row per assignment, the newest wins)
    old = json.loads(out.read_text())["rows"] if out.exists() else []
    merged = {r["assignment"]: r for r in old + rows}
    out.write_text(json.dumps({"machine_cpus": os.cpu_count(), "python": sys.version.split()[0],
                               "load_average_1min": os.getloadavg()[0], "rows": list(merged.values())}, indent=1))


if __name__ == "__main__":
    main()
