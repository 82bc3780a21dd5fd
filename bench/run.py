#!/usr/bin/env python3
"""treadle benchmarks: ``make bench`` (default), ``python bench/run.py --quick|--full``.

Every library workload is compared with a *floor* measured in the same run, interleaved
with it, because absolute times on shared machines drift. See bench/README.md for what
each workload does and what its floor is; the workloads live beside this file, one module
each (bench/main.py runs them).

Prints a table (median, floor, ratio, target, verdict) and writes bench/results.json.
Timing assertions belong here, never in tests/.
"""

import sys
from pathlib import Path

# Run as a script, sys.path[0] is bench/ itself, where a module such as cli.py could shadow
# a top-level one; put the repository root there instead, so these load as ``bench.*``.
HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))

from bench.main import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
