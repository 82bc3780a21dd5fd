"""Smaller promises: data given again is reported, graph as JSON, retry's next-step hint."""

import json

import pytest


def test_new_data_for_an_existing_item_is_reported_not_silently_dropped(cli, pl):
    cli("advance", str(pl / "single.yaml"), "d-1", "--data", '{"v": 1}')
    again = cli("advance", str(pl / "single.yaml"), "d-1", "--data", '{"v": 2}')
    assert "warning: d-1 already exists" in again.stderr
    shown = json.loads(cli("status", "d-1", "--json").stdout)
    assert shown["data"] == {"v": 1}


def test_same_data_again_is_not_a_warning(cli, pl):
    cli("advance", str(pl / "single.yaml"), "d-1", "--data", '{"v": 1}')
    again = cli("advance", str(pl / "single.yaml"), "d-1", "--data", '{"v": 1}')
    assert "warning" not in again.stderr


@pytest.mark.no_db
def test_graph_json_lists_nodes_and_edges(cli, pl):
    out = json.loads(cli("graph", str(pl / "chain.yaml"), "--json").stdout)
    assert out["nodes"]
    for dep, stage in out["edges"]:
        assert out["nodes"].index(dep) < out["nodes"].index(stage)


def test_usage_errors_from_the_entry_point_are_one_line(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    treadle = Path(sys.executable).parent / "treadle"
    cases = [
        (["reject", "d-1", "review"], "Missing option '--reason'"),
        (["graph", "x.yaml", "--format", "png"], "'png' is not one of"),
        (["frobnicate"], "No such command 'frobnicate'"),
    ]
    for args, needle in cases:
        out = subprocess.run(
            [str(treadle), "--db", str(tmp_path / "t.db"), *args], capture_output=True, text=True
        )
        assert out.returncode == 2, args
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], lines
        assert not (tmp_path / "t.db").exists()
