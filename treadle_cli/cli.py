"""The treadle command line (placeholder until the CLI lands)."""

import sys


def main() -> None:
    from . import __version__

    print(f"treadle {__version__}")
    sys.exit(0)
