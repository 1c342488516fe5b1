"""Autograding cost per submission against the notebook's own run time (goal: at most 1.5x).

    .venv/bin/python benchmarks/grading_time.py ch00-world --class-size 8 --jobs 2   # the issue-10 check
    .venv/bin/python benchmarks/grading_time.py [ASSIGNMENT ...] [--class-size N] [--jobs J] [--repeats R]
                                                [--per-student]

For each assignment (default: all in solutions/) a throw-away course is built and released with
nbgrader, and a class of N identical solved submissions (the master's solutions in the release) is
made. Then, R times over:

- *own* (before and after each grading run, so that both see the same machine load): the solved
  notebook executed once by nbclient in a fresh kernel, **from the kernel's start to the end of the
  last cell** -- what a student waits for after "Restart kernel and run all". CPU: the kernel's
  (psutil, at the last cell) plus the client's. The kernel's graceful shutdown is not counted (the
  student does not wait for it); ``jupyter nbconvert --execute`` would also wait for that shutdown
  (reported as ``own_nbconvert_s``: Python's start-up of nbconvert itself still excluded);
- *autograde, amortised*: the N submissions graded by ONE worker running ONE ``nbgrader autograde``
  process for all of them (``grade(..., jobs=1)``, the grader's default mode): wall time / N, and the
  CPU of nbgrader and all its kernels / N. This includes everything the grader does per student and
  the nbgrader start-up shared by the N: the gradebook, repairing the submission, the instructor's
  hidden tests, the time and memory limits, writing the graded notebook.

The ratio of one repeat is autograde (per submission) / own (mean of the run before and after); the
median over the R repeats is reported, wall and CPU, with the load average. CPU ratios are far less
sensitive to other jobs on the machine than wall ratios. Also measured once: the whole class with J
workers (wall per submission) and, with ``--per-student``, one nbgrader process per student (the
grader's old mode, ``grade(..., batch=False)``).

Results to stdout and ``benchmarks/results/grading_time.json`` (one row per assignment, newest wins).
"""
import argparse
import json
import os
import pathlib
import resource
import statistics
import sys
import tempfile
import time

import nbformat
import psutil
from nbclient import NotebookClient

from rl4lmt.grading.cli import grade
from rl4lmt.grading.course import assignments, build_course, solved_from_master, submit

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _children_cpu() -> float:
    """CPU seconds of every finished child (nbgrader and its kernels, nbclient's kernels)."""
    b = resource.getrusage(resource.RUSAGE_CHILDREN)
    return b.ru_utime + b.ru_stime


def _self_cpu() -> float:
    a = resource.getrusage(resource.RUSAGE_SELF)
    return a.ru_utime + a.ru_stime


def own_time(nb, folder: pathlib.Path) -> dict:
    """One run of the notebook in a fresh kernel: wall from the kernel's start to the end of the last
    cell, its CPU (kernel + client), and the ``nbconvert --execute`` wall (graceful shutdown included)."""
    nb = nbformat.from_dict(nb)
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(folder)}})
    t0, s0, c0 = time.perf_counter(), _self_cpu(), _children_cpu()
    with client.setup_kernel():
        pid = client.km.provisioner.process.pid
        for index, cell in enumerate(nb.cells):
            if cell.cell_type == "code":
                client.execute_cell(cell, index)
        wall = time.perf_counter() - t0
        kernel = psutil.Process(pid)
        times = kernel.cpu_times()
        cpu = times.user + times.system + times.children_user + times.children_system + _self_cpu() - s0
    return {"own_s": wall, "own_cpu_s": cpu, "own_nbconvert_s": time.perf_counter() - t0,
            "own_nbconvert_cpu_s": _self_cpu() - s0 + _children_cpu() - c0}


def _class(course, name, n, prefix, **kw) -> dict:
    """Wall and CPU seconds per submission of grading n copies (and whether all were graded)."""
    students = [f"{prefix}{i:02d}" for i in range(n)]
    for s in students:
        if not (course / "submitted" / s).exists():
            raise RuntimeError(f"no submission for {s}")
    load = os.getloadavg()[0]
    t, c, s = time.perf_counter(), _children_cpu(), _self_cpu()
    results = grade(name, course, students=students, **kw)
    return {"s": (time.perf_counter() - t) / n, "cpu_s": (_children_cpu() - c + _self_cpu() - s) / n,
            "ok": all(r["ok"] for r in results), "load": round((load + os.getloadavg()[0]) / 2, 1)}


def bench(name: str, class_size: int, jobs: int, repeats: int, per_student: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        course = build_course(pathlib.Path(tmp) / "course", [name], ROOT)
        master = nbformat.read(ROOT / "solutions" / name / f"{name}.ipynb", as_version=4)
        release = nbformat.read(course / "exercises" / name / f"{name}.ipynb", as_version=4)
        solved = solved_from_master(master, release)
        folder = course / "exercises" / name
        prefixes = [f"r{r}_" for r in range(repeats)] + ["c"] + (["p"] if per_student else [])
        for prefix in prefixes:
            for i in range(class_size):
                submit(course, f"{prefix}{i:02d}", name, solved)
        own_time(solved, folder)  # warm-up: page cache, bytecode; not counted
        runs = []
        for r in range(repeats):
            before = own_time(solved, folder)
            graded = _class(course, name, class_size, f"r{r}_", jobs=1)
            after = own_time(solved, folder)
            own = {k: (before[k] + after[k]) / 2 for k in before}
            runs.append({**{k: round(v, 2) for k, v in own.items()},
                         "amortised_s": round(graded["s"], 2), "amortised_cpu_s": round(graded["cpu_s"], 2),
                         "ratio": round(graded["s"] / own["own_s"], 2),
                         "cpu_ratio": round(graded["cpu_s"] / own["own_cpu_s"], 2),
                         "ratio_to_nbconvert": round(graded["s"] / own["own_nbconvert_s"], 2),
                         "load_average": graded["load"], "all_ok": graded["ok"]})
            print(f"  {name} repeat {r + 1}/{repeats}: {runs[-1]}", flush=True)
        in_class = _class(course, name, class_size, "c", jobs=jobs)
        old = _class(course, name, class_size, "p", jobs=1, batch=False) if per_student else None
    med = lambda key: round(statistics.median(run[key] for run in runs), 2)  # noqa: E731
    row = {"assignment": name, "class_size": class_size, "repeats": repeats,
           "own_s": med("own_s"), "own_cpu_s": med("own_cpu_s"), "own_nbconvert_s": med("own_nbconvert_s"),
           "amortised_s": med("amortised_s"), "amortised_cpu_s": med("amortised_cpu_s"),
           "ratio_median": med("ratio"), "cpu_ratio_median": med("cpu_ratio"),
           "ratio_to_nbconvert_median": med("ratio_to_nbconvert"), "load_average_median": med("load_average"),
           "runs": runs, "jobs": jobs, "per_submission_in_class_s": round(in_class["s"], 2),
           "in_class_ratio": round(in_class["s"] / med("own_s"), 2), "in_class_load": in_class["load"],
           "all_ok": all(run["all_ok"] for run in runs) and in_class["ok"]}
    if old:
        row.update(per_student_process_s=round(old["s"], 2),
                   per_student_process_ratio=round(old["s"] / med("own_s"), 2),
                   per_student_process_cpu_ratio=round(old["cpu_s"] / med("own_cpu_s"), 2))
        row["all_ok"] = row["all_ok"] and old["ok"]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help="assignments (default: all)")
    ap.add_argument("--class-size", type=int, default=8, help="submissions per grading run")
    ap.add_argument("--jobs", type=int, default=os.cpu_count(), help="workers for the whole-class run")
    ap.add_argument("--repeats", type=int, default=3, help="own/autograde/own measurements (the median is reported)")
    ap.add_argument("--per-student", action="store_true", help="also grade with one nbgrader process per student")
    args = ap.parse_args()
    os.environ.update(HF_HUB_OFFLINE="1", MPLBACKEND="Agg")
    rows = [bench(n, args.class_size, args.jobs, args.repeats, args.per_student)
            for n in (args.names or assignments(ROOT))]
    for r in rows:
        print(f"{r['assignment']}: own run {r['own_s']:.1f} s wall / {r['own_cpu_s']:.1f} s CPU "
              f"(nbconvert-equivalent {r['own_nbconvert_s']:.1f} s); autograde per submission (one nbgrader "
              f"process, {r['class_size']} submissions) {r['amortised_s']:.1f} s wall / "
              f"{r['amortised_cpu_s']:.1f} s CPU")
        print(f"  ratio (median of {r['repeats']}): wall {r['ratio_median']:.2f}x, CPU {r['cpu_ratio_median']:.2f}x "
              f"(to nbconvert: {r['ratio_to_nbconvert_median']:.2f}x) at load average {r['load_average_median']}; "
              f"whole class with {r['jobs']} workers: {r['per_submission_in_class_s']:.1f} s per submission "
              f"({r['in_class_ratio']:.2f}x)" + ("" if r["all_ok"] else "  SOME GRADING RUNS FAILED"))
        if "per_student_process_s" in r:
            print(f"  one nbgrader process per student: {r['per_student_process_s']:.1f} s "
                  f"({r['per_student_process_ratio']:.2f}x wall, {r['per_student_process_cpu_ratio']:.2f}x CPU)")
    out = ROOT / "benchmarks" / "results" / "grading_time.json"
    out.parent.mkdir(exist_ok=True)
    old = json.loads(out.read_text()).get("rows", []) if out.exists() else []
    merged = {r["assignment"]: r for r in old + rows}  # one row per assignment, the newest wins
    out.write_text(json.dumps({"machine_cpus": os.cpu_count(), "python": sys.version.split()[0],
                               "rows": list(merged.values())}, indent=1) + "\n")


if __name__ == "__main__":
    main()
