"""Sphinx glue for the book's pages as readers load them (wired in by ``_config.yml``).

Jupyter Book 1 always loads ``sphinx_thebe``, which registers an inline script declaring
``const THEBE_JS_URL``. Under Sphinx 7.4 that script reaches every page twice (registered once
with the file name ``None`` and once as ``""``, which Sphinx does not see as equal), and the
second copy is a JavaScript error on every page: "Identifier 'THEBE_JS_URL' has already been
declared". Here each page keeps one copy of every script. tests/test_browser.py catches the error.
"""
from __future__ import annotations

from typing import Any


def _one_copy_of_each_script(app, pagename: str, templatename: str, context: dict[str, Any], doctree) -> None:
    scripts = context.get("script_files")
    if not scripts:
        return
    seen: set = set()
    unique = []
    for js in scripts:
        # None and "" both mean "an inline script": the same script for the page.
        key = (str(js.filename or ""), js.priority, tuple(sorted(js.attributes.items())))
        if key not in seen:
            seen.add(key)
            unique.append(js)
    scripts[:] = unique


def setup(app) -> dict[str, Any]:
    # Late priority: after every extension has added its scripts for this page.
    app.connect("html-page-context", _one_copy_of_each_script, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
