"""cli: start-up of whole ``treadle`` processes, against ``python -c pass``; import times."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from typing import Any

from bench.core import PY, TREADLE, Bench, child_env, log, med, open_store, run_child, run_in_pty
from bench.report import Row
from bench.w3 import review_workflow

APPROVE_TARGET_MS = 150.0
STATUS_ITEM_TARGET_MS = 200.0
#: ``python -c pass`` on the machine the issue's absolute CLI targets were set on
PASS_REF_MS = 14.0


def gate_db(tmp: str, name: str, n: int, extra: Sequence[str] = ()) -> str:
    """A database with ``n`` items waiting at a review gate and one completed item."""
    path = os.path.join(tmp, name)
    wf = review_workflow("cli")
    store = open_store(path)
    for i in [f"doc-{i}" for i in range(n)] + list(extra):
        wf.advance(i, store)
    wf.advance("done-1", store)
    wf.approve_review("done-1", "review", store, by="bench")
    wf.advance("done-1", store)
    store.close()
    return path


def run_cli(b: Bench) -> None:
    n = b.runs("cli_runs")
    warm = 2
    log(f"CLI start-up: {n} runs per command (+{warm} warm-up)")
    db = gate_db(b.tmp, "cli.db", 2 * (n + warm) + 8)
    cwd = b.tmp
    cmds: dict[str, list[str]] = {
        "python -c pass": [PY, "-c", "pass"],
        "python -c 'import typer'": [PY, "-c", "import typer"],
        "treadle --version": [TREADLE, "--version"],
        "treadle status ITEM (piped)": [TREADLE, "--db", db, "status", "done-1"],
    }
    samples: dict[str, list[float]] = {k: [] for k in cmds}
    samples["treadle approve ITEM STAGE"] = []
    samples["treadle status ITEM (terminal)"] = []
    samples["treadle approve, no .pyc cache"] = []
    rss: dict[str, int] = {}
    counter = iter(range(2 * (n + warm) + 8))
    for r in range(n + warm):
        # interleave all commands so drift hits them alike
        for k, cmd in cmds.items():
            res = run_child(cmd, cwd=cwd)
            if res.rc != 0:
                raise SystemExit(f"{k} failed ({res.rc}): {res.stderr}")
            if r >= warm:
                samples[k].append(res.wall)
        res = run_child(
            [TREADLE, "--db", db, "approve", f"doc-{next(counter)}", "review", "--by", "bench"],
            cwd=cwd,
        )
        if res.rc != 0:
            raise SystemExit(f"approve failed ({res.rc}): {res.stderr}")
        if r >= warm:
            samples["treadle approve ITEM STAGE"].append(res.wall)
        res = run_child(
            [TREADLE, "--db", db, "approve", f"doc-{next(counter)}", "review", "--by", "bench"],
            cwd=cwd,
            env=child_env(bytecode=False),
        )
        if res.rc != 0:
            raise SystemExit(f"approve (no .pyc) failed ({res.rc}): {res.stderr}")
        if r >= warm:
            samples["treadle approve, no .pyc cache"].append(res.wall)
        res = run_in_pty([TREADLE, "--db", db, "status", "done-1"], cwd=cwd)
        if res.rc != 0 or b"publish" not in res.stdout:
            raise SystemExit(f"status (terminal) failed ({res.rc}): {res.stdout[-500:]!r}")
        if r >= warm:
            samples["treadle status ITEM (terminal)"].append(res.wall)
    for k, cmd in cmds.items():
        rss[k] = run_child(cmd, cwd=cwd, rss=True).maxrss_kb
    rss["treadle approve ITEM STAGE"] = run_child(
        [TREADLE, "--db", db, "approve", f"doc-{next(counter)}", "review", "--by", "bench"],
        cwd=cwd,
        rss=True,
    ).maxrss_kb
    base = med(samples["python -c pass"])
    targets = {
        "treadle approve ITEM STAGE": APPROVE_TARGET_MS,
        "treadle status ITEM (terminal)": STATUS_ITEM_TARGET_MS,
        "treadle status ITEM (piped)": STATUS_ITEM_TARGET_MS,
    }
    order = [
        "python -c pass",
        "python -c 'import typer'",
        "treadle --version",
        "treadle approve ITEM STAGE",
        "treadle status ITEM (piped)",
        "treadle status ITEM (terminal)",
        "treadle approve, no .pyc cache",
    ]
    for k in order:
        xs = [x * 1e3 for x in samples[k]]
        t = targets.get(k)
        b.rows.append(
            Row(
                f"cli:{k}",
                f"CLI {k}",
                "ms",
                xs,
                floor=None if k == "python -c pass" else base * 1e3,
                floor_label="python -c pass",
                target=f"≤ {t:g} ms (≈{t / PASS_REF_MS:.1f}x pass)" if t else "",
                ok=(med(xs) <= t) if t else None,
                ok_by_ratio=bool(t) and med(xs) / (base * 1e3) <= t / PASS_REF_MS,
                notes=f"peak RSS {rss[k] / 1024:.1f} MiB"
                if k in rss
                else "PYTHONDONTWRITEBYTECODE=1 (as in this sandbox): every treadle_cli "
                "module compiled from source"
                if "no .pyc" in k
                else "",
            )
        )
    b.info["importtime_approve"] = importtime(
        b.tmp,
        lambda: [
            TREADLE,
            "--db",
            db,
            "approve",
            f"doc-{next(counter)}",
            "review",
            "--by",
            "bench",
        ],
    )
    b.info["importtime_status"] = importtime(
        b.tmp, lambda: [TREADLE, "--db", db, "status", "done-1"]
    )
    b.info["import_costs_ms"] = import_costs()


def importtime(cwd: str, make_cmd: Callable[[], list[str]]) -> dict[str, Any]:
    """``python -X importtime`` of a treadle command: top imports and per-package self time."""
    best: dict[str, Any] | None = None
    for _ in range(5):  # keep the fastest of five, the least disturbed
        res = run_child([PY, "-X", "importtime", *make_cmd()], cwd=cwd)
        rows = []
        for line in res.stderr.splitlines():
            m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)", line)
            if m:
                rows.append((int(m.group(1)), int(m.group(2)), len(m.group(3)), m.group(4)))
        total = sum(r[0] for r in rows)
        if best is None or total < best["total_us"]:
            depth0 = min((r[2] for r in rows), default=0)
            top_level = sorted((r for r in rows if r[2] == depth0), key=lambda r: -r[1])
            by_pkg: dict[str, int] = {}
            for s, _, _, name in rows:
                pkg = name.split(".")[0]
                if pkg.startswith("typer") and "._click" in name:
                    pkg = "typer._click"
                by_pkg[pkg] = by_pkg.get(pkg, 0) + s
            best = {
                "total_us": total,
                "wall_ms": res.wall * 1e3,
                "top_level_cumulative_ms": [(n, c / 1e3) for _, c, _, n in top_level[:15]],
                "by_package_self_ms": sorted(
                    ((k, v / 1e3) for k, v in by_pkg.items()), key=lambda kv: -kv[1]
                )[:15],
                "top_self_ms": [
                    (n, s / 1e3) for s, _, _, n in sorted(rows, key=lambda r: -r[0])[:15]
                ],
            }
    assert best is not None
    return best


def import_costs() -> dict[str, float]:
    """``python -c 'import X'`` minus ``python -c pass``, medians of 5 (ms)."""
    mods = [
        "typer",
        "rich",
        "rich.console",
        "yaml",
        "networkx",
        "sqlite_utils",
        "treadle_cli",
        "treadle_cli.cli",
    ]
    base = med([run_child([PY, "-c", "pass"]).wall for _ in range(5)])
    out = {}
    for m in mods:
        out[m] = (med([run_child([PY, "-c", f"import {m}"]).wall for _ in range(5)]) - base) * 1e3
    out["_python_c_pass"] = base * 1e3
    return out
