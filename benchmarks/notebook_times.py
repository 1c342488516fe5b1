"""Wall-clock time to execute every chapter page and every solution notebook.

    .venv/bin/python benchmarks/notebook_times.py [--only chapters|solutions] [names...]

Budgets (2 CPU cores): a chapter <= 75 s, a solution notebook <= 120 s. Each notebook runs in a
fresh kernel from its own folder, offline, on the CPU; the table goes to stdout and to
benchmarks/results/notebook_times.json. A notebook that fails is reported with its error.

The json is merged, not overwritten: a run of some notebooks replaces only their rows, and each
row records when it was measured and the 1-minute load average at its end (a shared machine's
wall times are only comparable with their load).
"""
import argparse
import json
import os
import tempfile
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
    load = float(open("/proc/loadavg").read().split()[0])
    return {"kind": kind, "name": path.stem, "seconds": round(seconds, 1), "budget": BUDGET[kind],
            "within_budget": error is None and seconds <= BUDGET[kind], "error": error,
            "load_average_1min": load, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def save(results: list[dict], path: Path) -> None:
    """Merge ``results`` into the json at ``path`` (rows keyed by kind and name), atomically."""
    rows = {}
    if path.exists():
        try:
            rows = {(r["kind"], r["name"]): r for r in json.loads(path.read_text()).get("results", [])}
        except (ValueError, KeyError, TypeError):
            rows = {}  # an unreadable old file is replaced, not fatal
    rows.update({(r["kind"], r["name"]): r for r in results})
    ordered = sorted(rows.values(), key=lambda r: (r["kind"], r["name"]))
    path.parent.mkdir(exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as f:
        json.dump({"results": ordered}, f, indent=1)
    os.replace(f.name, path)


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
    save(results, ROOT / "benchmarks" / "results" / "notebook_times.json")


if __name__ == "__main__":
    main()
