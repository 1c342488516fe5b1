"""Wall-clock time to execute every chapter page and every solution notebook.

    .venv/bin/python benchmarks/notebook_times.py [--only chapters|solutions] [names...]

Budgets (2 CPU cores): a chapter <= 75 s, a solution notebook <= 120 s. Each notebook runs in a
fresh kernel from its own folder, offline, on the CPU; the table goes to stdout and to
benchmarks/results/notebook_times.json. A notebook that fails is reported with its error.
"""
import argparse
import json
import os
import time
from pathlib import Path

import jupytext
import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
BUDGET = {"chapter": 75, "solution": 120}


def run(path: Path, kind: str) -> dict:
    nb = jupytext.read(path) if path.suffix == ".md" else nbformat.read(path, as_version=4)
    os.environ.update(HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="", MPLBACKEND="Agg")
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}})
    t = time.perf_counter()
    error = None
    try:
        client.execute()
    except Exception as err:  # report, keep going
        error = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
    seconds = time.perf_counter() - t
    return {"kind": kind, "name": path.stem, "seconds": round(seconds, 1), "budget": BUDGET[kind],
            "within_budget": error is None and seconds <= BUDGET[kind], "error": error}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", choices=["chapters", "solutions"])
    ap.add_argument("names", nargs="*", help="substrings of the notebooks to run (default: all)")
    args = ap.parse_args()
    todo = []
    if args.only != "solutions":
        todo += [(p, "chapter") for p in sorted((ROOT / "book").glob("ch*.md"))]
    if args.only != "chapters":
        todo += [(p, "solution") for p in sorted((ROOT / "solutions").glob("*/*.ipynb"))]
    if args.names:
        todo = [(p, k) for p, k in todo if any(n in p.stem for n in args.names)]
    results = []
    for path, kind in todo:
        r = run(path, kind)
        results.append(r)
        flag = "ok " if r["within_budget"] else "OVER" if r["error"] is None else "FAIL"
        print(f"{flag} {kind:8s} {r['name']:28s} {r['seconds']:7.1f} s (budget {r['budget']} s) {r['error'] or ''}",
              flush=True)
    load = list(map(float, open("/proc/loadavg").read().split()[:3]))
    out = ROOT / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    (out / "notebook_times.json").write_text(json.dumps({"load_average": load, "results": results}, indent=1))


if __name__ == "__main__":
    main()
