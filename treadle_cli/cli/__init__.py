"""The ``treadle`` command: parse, call the library, render, exit.

``app.py`` holds the typer app, the options every command shares and the error handling;
``commands/`` the commands; ``output.py`` every JSON they print; ``render.py`` the rich
renderables and plain lines. Heavy modules (networkx, yaml, rich, psycopg, stage code) are
imported inside the functions that need them, so ``treadle approve`` starts fast.
"""

from . import commands  # noqa: F401  (registers the commands on `app`)
from .app import app, main

__all__ = ["app", "main"]
