"""Smaller promises: data given again is reported, graph as JSON, retry's next-step hint."""

import json


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


def test_graph_json_lists_nodes_and_edges(cli, pl):
    out = json.loads(cli("graph", str(pl / "chain.yaml"), "--json").stdout)
    assert out["nodes"]
    for dep, stage in out["edges"]:
        assert out["nodes"].index(dep) < out["nodes"].index(stage)
