"""Sphinx glue for the book's pages as readers load them (wired in by ``_config.yml``).

1. One copy of every script per page. Jupyter Book 1 always loads ``sphinx_thebe``, which
   registers an inline script declaring ``const THEBE_JS_URL``. Under Sphinx 7.4 that script
   reaches every page twice (registered once with the file name ``None`` and once as ``""``,
   which Sphinx does not see as equal), and the second copy is a JavaScript error on every page:
   "Identifier 'THEBE_JS_URL' has already been declared". tests/test_browser.py catches it.

2. The role ``{assignment}`ch00-world``` : a link that opens the assignment notebook
   ``exercises/ch00-world/ch00-world.ipynb`` of the course repository in Colab. The address is
   built from ``_config.yml``'s ``repository`` (url, branch), the one place it lives; a missing
   notebook is a build warning (an error under ``-W``).
"""
from __future__ import annotations

import pathlib
import re
from typing import Any
from urllib.parse import urlparse

from docutils import nodes
from sphinx.util import logging

logger = logging.getLogger(__name__)
COLAB = "https://colab.research.google.com/github"


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


def colab_url(repository_url: str, branch: str, path: str) -> str:
    """Colab's address for a notebook ``path`` in a GitHub repository at ``branch``."""
    parsed = urlparse(repository_url)
    if parsed.netloc != "github.com":
        raise ValueError(f"repository_url must be a github.com address for Colab, got {repository_url!r}")
    org_repo = parsed.path.strip("/").removesuffix(".git")
    return f"{COLAB}/{org_repo}/blob/{branch}/{path}"


def _assignment_role(name, rawtext, text, lineno, inliner, options=None, content=None):
    env = inliner.document.settings.env
    assignment = text.strip()
    if not re.fullmatch(r"ch\d\d-[a-z0-9-]+", assignment):
        msg = inliner.reporter.error(f"assignment must look like 'chNN-topic', got {assignment!r}", line=lineno)
        return [inliner.problematic(rawtext, rawtext, msg)], [msg]
    path = f"exercises/{assignment}/{assignment}.ipynb"
    if not (pathlib.Path(env.app.srcdir) / path).is_file():
        logger.warning(f"{{assignment}}: {path} does not exist (run `make exercises`)", location=(env.docname, lineno))
    theme = env.config.html_theme_options
    url = colab_url(theme.get("repository_url", ""), theme.get("repository_branch", "main"), path)
    return [nodes.reference(rawtext, f"open {assignment} in Colab", refuri=url)], []


def setup(app) -> dict[str, Any]:
    # Late priority: after every extension has added its scripts for this page.
    app.connect("html-page-context", _one_copy_of_each_script, priority=900)
    app.add_role("assignment", _assignment_role)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
