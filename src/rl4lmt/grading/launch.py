"""``python -m rl4lmt.grading.launch ARGS``: ``python -m nbgrader ARGS``, minus a start-up cost.

The grader (:mod:`rl4lmt.grading.cli`) starts nbgrader through this module. nbgrader imports
nbformat, nbformat imports jsonschema, and jsonschema imports the optional ``rfc3987-syntax``
package when it is installed (it comes with jupyter's dependencies), which compiles 38 lark
grammars at import: about 2.5 s of CPU in every nbgrader process, for an IRI ``format`` check
that no notebook or nbgrader schema uses (jsonschema does not check formats unless asked to).
Blocking that one import before nbgrader starts leaves everything else as it is: the same
nbgrader, the same ``nbgrader_config.py``, the same validation of every notebook.
"""
from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    # None in sys.modules makes `import rfc3987_syntax` raise ImportError, which jsonschema expects
    # when the package is absent (it then registers no "iri" format checker)
    sys.modules.setdefault("rfc3987_syntax", None)
    from nbgrader.apps.nbgraderapp import main as nbgrader_main

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    nbgrader_main()


if __name__ == "__main__":
    main()
