"""``--profile W``: one library workload under cProfile."""

from __future__ import annotations

import cProfile
import io
import pstats
from collections.abc import Callable
from typing import Any

from bench.w1 import w1_run
from bench.w2 import w2_run
from bench.w3 import w3_run


def profile(which: str, tmp: str) -> None:
    """cProfile one library workload; print the top functions by own and total time."""
    work: dict[str, Callable[[], Any]] = {
        "W1": lambda: w1_run(tmp, "normal"),
        "W1-full": lambda: w1_run(tmp, "full"),
        "W2": lambda: (w2_run(tmp, 1, 1000), w2_run(tmp, 100, 10)),
        "W3": lambda: w3_run(tmp),
    }
    if which not in work:
        raise SystemExit(f"--profile takes one of {', '.join(work)}")
    work[which]()  # warm
    pr = cProfile.Profile()
    pr.enable()
    work[which]()
    pr.disable()
    for order in ("tottime", "cumulative"):
        s = io.StringIO()
        pstats.Stats(pr, stream=s).strip_dirs().sort_stats(order).print_stats(30)
        print(s.getvalue())
