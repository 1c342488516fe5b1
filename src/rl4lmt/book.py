"""Helpers for the book's pages (not for exercises): they may use the book's tools (myst-nb, from the dev extra).

Every number in a page's prose is computed by the page and quoted with :func:`glue`, so text and output
cannot drift apart when a model or a seed changes.
"""
from __future__ import annotations

import numpy as np

__all__ = ["glue"]


def glue(name: str, value, display: bool = False) -> None:
    """Quote a computed value in a book page's prose (myst-nb's ``glue``), so text and output cannot drift.

    numpy and 0-d torch scalars become Python numbers first: numpy 2's repr (``np.float64(0.3)``)
    is what myst-nb would store, and a format spec such as ``{glue:text}`name:.3f``` cannot parse it.
    """
    from myst_nb import glue as myst_glue  # imported here: importing rl4lmt.book must not need the book tools

    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty string, got {name!r}")
    if isinstance(value, np.generic) or (hasattr(value, "item") and getattr(value, "ndim", None) == 0):
        value = value.item()
    myst_glue(name, value, display=display)
