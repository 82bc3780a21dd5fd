"""The commands, one module per concept. Importing this package registers them on ``app``,
in the order ``--help`` lists them; each keeps its heavy imports inside its functions."""

from . import advance, work, decide, read, watch, pipeline  # noqa: F401  # isort: skip
