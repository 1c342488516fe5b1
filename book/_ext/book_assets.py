"""Sphinx glue for the book's pages as readers load them (wired in by ``_config.yml``).

1. One copy of every script per page. Jupyter Book 1 always loads ``sphinx_thebe``, which
   registers an inline script declaring ``const THEBE_JS_URL``. Under Sphinx 7.4 that script
   reaches every page twice (registered once with the file name ``None`` and once as ``""``,
   which Sphinx does not see as equal), and the second copy is a JavaScript error on every page:
   "Identifier 'THEBE_JS_URL' has already been declared". tests/test_browser.py catches it.

2. Widgets rendered as static HTML. A ``tqdm.auto`` progress bar executed at build time is an
   ipywidget; myst-nb would load RequireJS and the widget manager from two CDNs to draw it, so an
   offline reader gets console errors and no bar. The notebook stores each widget's final state,
   so the bar (text, progress, text) is written into the page as plain HTML instead, and the CDN
   scripts are dropped. Widgets of other kinds are left as they were.

3. The role ``{assignment}`ch00-world``` : a link that opens the assignment notebook
   ``exercises/ch00-world/ch00-world.ipynb`` of the course repository in Colab. The address is
   built from ``_config.yml``'s ``repository`` (url, branch), the one place it lives; a missing
   notebook is a build warning (an error under ``-W``).
"""
from __future__ import annotations

import html
import json
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


WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
WIDGET_VIEW = re.compile(r'<script type="application/vnd\.jupyter\.widget-view\+json">(.*?)</script>', re.S)


def _widget_html(models: dict, model_id: str, depth: int = 0) -> str | None:
    """Static HTML for one widget from its saved state; None where the kind is not known."""
    model = models.get(model_id)
    if model is None or depth > 10:
        return None
    kind, state = model.get("model_name", ""), model.get("state", {})
    if kind in ("HBoxModel", "VBoxModel", "BoxModel"):
        children = [_widget_html(models, c.removeprefix("IPY_MODEL_"), depth + 1) for c in state.get("children", [])]
        if any(c is None for c in children):
            return None
        direction = "column" if kind == "VBoxModel" else "row"
        return (f'<div class="rl4lmt-widget" style="display:flex;flex-direction:{direction};'
                f'align-items:center;gap:0.5em">{"".join(children)}</div>')
    if kind in ("HTMLModel", "HTMLMathModel"):
        return f"<span>{state.get('value', '')}</span>"  # HTML by definition (tqdm's texts)
    if kind == "LabelModel":
        return f"<span>{html.escape(str(state.get('value', '')))}</span>"
    if kind in ("FloatProgressModel", "IntProgressModel"):
        low, high, value = (float(state.get(k, d)) for k, d in (("min", 0), ("max", 100), ("value", 0)))
        return (f'<progress max="{high - low:g}" value="{value - low:g}" style="flex:0 1 20em">'
                f"{value:g}/{high:g}</progress>")
    return None


def _static_widgets(app, pagename: str, templatename: str, context: dict[str, Any], doctree) -> None:
    scripts = context.get("script_files") or []
    state_scripts = [js for js in scripts if js.attributes.get("type") == WIDGET_STATE]
    body = context.get("body", "")
    if not state_scripts or "widget-view+json" not in body:
        return
    models = json.loads(state_scripts[0].attributes["body"]).get("state", {})
    rendered = {"all": True}

    def replace(match: re.Match) -> str:
        view = json.loads(match.group(1))
        static = _widget_html(models, view.get("model_id", ""))
        if static is None:
            rendered["all"] = False
            return match.group(0)
        return static

    context["body"] = WIDGET_VIEW.sub(replace, body)
    if rendered["all"]:  # nothing left for the widget manager: no CDN scripts, no state
        cdn = set(app.config.nb_ipywidgets_js or {})
        scripts[:] = [js for js in scripts if js not in state_scripts and str(js.filename) not in cdn]


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
    app.connect("html-page-context", _static_widgets, priority=900)
    app.add_role("assignment", _assignment_role)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
