"""The built book as a reader meets it: every page opened in a real browser, offline.

The built HTML (``_build/html``, written by ``make book``; ``make test`` builds it first) is
served on loopback and every page listed in ``_toc.yml`` is opened in headless Chromium
(Debian's ``chromium`` package, driven by the ``playwright`` package, which never downloads a
browser of its own). Every request that leaves the machine is blocked and counted as a
failure, so the checks below hold for a reader without network:

- formulas were typeset by MathJax (shipped with the book, see ``_config.yml``): every math
  element holds a MathJax rendering, no TeX error, no raw ``\\(``, ``\\[``, ``$$`` or
  ``\\command`` left in the visible text outside code;
- every image loads, no request fails, no JavaScript error is raised or logged;
- every Colab link opens a notebook that exists in the course repository, and each chapter
  page ``chNN-*`` links to its assignment ``exercises/chNN-*/chNN-*.ipynb`` in Colab.

A full-page screenshot of each page is written to ``_build/screenshots/`` (before the checks,
so a failing page can be looked at too).

When ``_build/html`` is missing the tests are skipped with a loud reason (``make test`` always
builds it; run ``make book`` first when running pytest alone). ``RL4LMT_BOOK_HTML`` points the
tests at another build. When Chromium is missing, ``make test`` installs it (``make
chromium``); only where that is impossible are the tests skipped, loudly. Under CI
(``RL4LMT_CI=1``, set by ``.ci/run``) such a skip is a failure with the same reason (see
``tests/conftest.py``), so CI cannot pass without the browser test having run.
"""
from __future__ import annotations

import functools
import http.server
import os
import pathlib
import re
import shutil
import threading
import urllib.parse

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
HTML = pathlib.Path(os.environ.get("RL4LMT_BOOK_HTML", ROOT / "_build" / "html"))
SCREENSHOTS = ROOT / "_build" / "screenshots"
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())

# Launch flags known to work on the course machines (root, no network, no GPU). Playwright
# gives every launch a fresh, empty profile (user-data-dir) of its own.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LOOPBACK = {"127.0.0.1", "localhost", "[::1]", "::1"}


def toc_pages() -> list[str]:
    """Every page of the book, in reading order, as listed in _toc.yml (without extension)."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    pages = [toc["root"]]

    def walk(node):
        if isinstance(node, dict):
            if "file" in node:
                pages.append(node["file"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk({k: v for k, v in toc.items() if k != "root"})
    return [str(pathlib.PurePosixPath(p).with_suffix("")) for p in pages]


def chromium_path() -> str | None:
    """RL4LMT_CHROMIUM when set (and only it: an explicit choice), else Debian's chromium."""
    if os.environ.get("RL4LMT_CHROMIUM"):
        exe = os.environ["RL4LMT_CHROMIUM"]
        return exe if os.access(exe, os.X_OK) else None
    for candidate in ("/usr/bin/chromium", shutil.which("chromium")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def colab_prefix() -> str:
    """Where Colab opens a notebook of the course repository (built from _config.yml only)."""
    repo = urllib.parse.urlparse(CONFIG["repository"]["url"])
    org_repo = repo.path.strip("/").removesuffix(".git")
    branch = CONFIG["repository"].get("branch", "main")
    return f"https://colab.research.google.com/github/{org_repo}/blob/{branch}/"


def assignment_for(page: str) -> str | None:
    """The assignment of a chapter page ``book/chNN-topic`` (the folder ``solutions/chNN-*``)."""
    m = re.match(r"(ch\d\d)-", pathlib.PurePosixPath(page).name)
    if not m:
        return None
    found = sorted(p.name for p in (ROOT / "solutions").glob(f"{m.group(1)}-*") if p.is_dir())
    return found[0] if found else pathlib.PurePosixPath(page).name


# JavaScript run in the page after it loaded: waits for MathJax, then reports what a reader sees.
INSPECT_JS = r"""
async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    await MathJax.startup.promise;
  }
  // Lazy images would only load when scrolled to: make them load now.
  for (const img of document.images) { if (img.loading === "lazy") img.loading = "eager"; }
  const t0 = Date.now();
  while (Array.from(document.images).some(i => !i.complete) && Date.now() - t0 < 15000) {
    await new Promise(r => setTimeout(r, 100));
  }
  // Visible prose: every text node outside code, scripts and hidden elements.
  const skip = new Set(["PRE", "CODE", "SCRIPT", "STYLE", "NOSCRIPT", "TEXTAREA", "KBD", "SAMP",
                        "MJX-ASSISTIVE-MML", "MATH"]);
  const parts = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT, {
    acceptNode(node) {
      for (let el = node.parentElement; el; el = el.parentElement) {
        if (skip.has(el.tagName.toUpperCase())) return NodeFilter.FILTER_REJECT;
      }
      const el = node.parentElement;
      if (!el || !el.getClientRects().length) return NodeFilter.FILTER_REJECT;
      const style = getComputedStyle(el);
      if (style.visibility === "hidden" || style.display === "none") return NodeFilter.FILTER_REJECT;
      return NodeFilter.FILTER_ACCEPT;
    }
  });
  while (walker.nextNode()) parts.push(walker.currentNode.nodeValue);
  const math = Array.from(document.querySelectorAll(".math"));
  return {
    mathjax_loaded: !!(window.MathJax && MathJax.version),
    mathjax_version: window.MathJax && MathJax.version ? MathJax.version : null,
    math_elements: math.length,
    untypeset: math.filter(el => !el.querySelector("mjx-container")).map(el => el.textContent.slice(0, 80)),
    tex_errors: Array.from(document.querySelectorAll("mjx-merror, [data-mjx-error]"))
                  .map(el => el.getAttribute("data-mjx-error") || el.textContent.slice(0, 80)),
    text: parts.join(" "),
    images: Array.from(document.images).map(i => ({src: i.currentSrc || i.src,
                                                     ok: i.complete && i.naturalWidth > 0})),
    links: Array.from(document.querySelectorAll("a[href]")).map(a => a.href),
  };
}
"""

RAW_TEX = [
    (re.compile(r"\\\(|\\\)"), r"raw inline delimiters \( \)"),
    (re.compile(r"\\\[|\\\]"), r"raw display delimiters \[ \]"),
    (re.compile(r"\$\$"), "raw $$"),
    (re.compile(r"\\(?:begin|end|frac|sum|prod|mid|log|theta|pi|mathbb|mathcal|left|right|"
                r"alpha|beta|gamma|epsilon|lambda|sigma|nabla|partial|cdot|le|ge|approx|in)\b"),
     r"a raw LaTeX command"),
]


@pytest.fixture(scope="module")
def site():
    """The built book served over HTTP on loopback (an ephemeral port), for this module."""
    if not (HTML / "index.html").is_file():
        pytest.skip(f"BOOK NOT BUILT: {HTML}/index.html is missing. `make test` builds the book "
                    "before running pytest; alone, run `make book` first (or set RL4LMT_BOOK_HTML).")
    handler = functools.partial(QuietHandler, directory=str(HTML))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest's output readable
        pass


@pytest.fixture(scope="module")
def browser():
    """Headless Debian Chromium, driven by Playwright (which downloads no browser of its own)."""
    exe = chromium_path()
    if exe is None:
        pytest.skip("CHROMIUM NOT INSTALLED: the browser test did not run. `make test` installs "
                    "Debian's chromium package (`make chromium`, needs root and apt-get); "
                    "install it by hand or set RL4LMT_CHROMIUM=/path/to/chromium.")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, headless=True, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


@pytest.mark.slow
@pytest.mark.parametrize("page_name", toc_pages())
def test_page_renders_offline(page_name, site, browser):
    html_file = HTML / f"{page_name}.html"
    assert html_file.is_file(), f"{page_name} is in _toc.yml but {html_file} was not built"
    problems: list[str] = []
    external: list[str] = []

    context = browser.new_context(viewport={"width": 1280, "height": 900}, service_workers="block")

    def route(r):
        host = urllib.parse.urlparse(r.request.url).hostname or ""
        if host in LOOPBACK or r.request.url.startswith(("data:", "blob:")):
            r.continue_()
        else:  # offline reader: nothing may leave the machine
            external.append(r.request.url)
            r.abort()

    context.route("**/*", route)
    page = context.new_page()
    page.on("pageerror", lambda exc: problems.append(f"JavaScript error: {exc}"))
    page.on("console", lambda msg: problems.append(f"console.{msg.type}: {msg.text}")
            if msg.type == "error" else None)
    page.on("requestfailed", lambda req: None if req.url in external else
            problems.append(f"request failed: {req.url} ({req.failure})"))
    page.on("response", lambda resp: problems.append(f"HTTP {resp.status}: {resp.url}")
            if resp.status >= 400 else None)
    try:
        page.goto(site + f"{page_name}.html", wait_until="load", timeout=60_000)
        info = page.evaluate(INSPECT_JS)
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / f"{page_name.replace('/', '__')}.png"), full_page=True)
    finally:
        context.close()

    # Math: typeset by the MathJax copy shipped with the book, no raw TeX left over.
    if info["math_elements"]:
        if not info["mathjax_loaded"]:
            problems.append(f"{info['math_elements']} math elements but MathJax did not load")
        elif not info["mathjax_version"].startswith("3."):
            problems.append(f"MathJax {info['mathjax_version']} loaded; the book ships MathJax 3")
    problems += [f"formula not typeset: {t!r}" for t in info["untypeset"]]
    problems += [f"TeX error in a formula: {t!r}" for t in info["tex_errors"]]
    for pattern, what in RAW_TEX:
        for m in pattern.finditer(info["text"]):
            snippet = info["text"][max(0, m.start() - 40): m.end() + 40].replace("\n", " ")
            problems.append(f"{what} in the visible text: ...{snippet}...")

    # Images.
    problems += [f"image did not load: {img['src']}" for img in info["images"] if not img["ok"]]
    problems += [f"request to the network (reader offline): {url}" for url in external]

    # Colab: every link opens an existing notebook of the course repository; a chapter page
    # links to its own assignment.
    prefix = colab_prefix()
    colab = sorted({u for u in info["links"] if "colab.research.google.com" in u})
    for url in colab:
        if not url.startswith(prefix):
            problems.append(f"Colab link not into the course repository ({prefix}...): {url}")
            continue
        target = url[len(prefix):].split("#")[0].split("?")[0]
        if not target.endswith(".ipynb"):
            problems.append(f"Colab link to a file Colab cannot open (not .ipynb): {url}")
        elif not (ROOT / target).is_file():
            problems.append(f"Colab link to a notebook missing from the repository: {target}")
    assignment = assignment_for(page_name)
    if assignment is not None:
        expected = f"{prefix}exercises/{assignment}/{assignment}.ipynb"
        if expected not in colab:
            problems.append(
                f"chapter page without a Colab link to its assignment: expected a link to {expected} "
                f"(found Colab links: {colab or 'none'})")
        if not (ROOT / "exercises" / assignment / f"{assignment}.ipynb").is_file():
            problems.append(f"the assignment notebook exercises/{assignment}/{assignment}.ipynb "
                            "does not exist (run `make exercises`)")

    assert not problems, f"{page_name}.html, as a reader sees it offline:\n  " + "\n  ".join(problems)


def test_mathjax_ships_with_the_book(site):
    """The MathJax the pages load is the copy inside the built book, not a CDN."""
    script = HTML / "_static" / "mathjax" / "tex-chtml.js"
    assert script.is_file(), f"{script} missing: is sphinx-mathjax-offline in sphinx.extra_extensions?"
    for page in toc_pages():
        assert (HTML / f"{page}.html").is_file(), f"{page} is in _toc.yml but was not built"
        text = (HTML / f"{page}.html").read_text(encoding="utf-8")
        srcs = re.findall(r"<script[^>]*src=\"([^\"]*mathjax[^\"]*)\"", text, flags=re.I)
        for src in srcs:
            path = src.split("?")[0]  # Sphinx appends ?v=<checksum>
            assert "://" not in path and path.endswith("_static/mathjax/tex-chtml.js"), (
                f"{page}.html loads MathJax from {src}, expected the shipped _static/mathjax/tex-chtml.js")
