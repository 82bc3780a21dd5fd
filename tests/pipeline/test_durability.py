import pytest

from treadle_cli.errors import PipelineError
from treadle_cli.pipeline import load_pipeline


def _write(tmp_path, durability):
    (tmp_path / "m.py").write_text("def a(item, ctx):\n    return None\n")
    extra = f"durability: {durability}\n" if durability else ""
    path = tmp_path / "p.yaml"
    path.write_text(f"pipeline: t\n{extra}stages:\n  a: {{uses: m:a}}\n")
    return path


def test_durability_key_is_read(tmp_path):
    assert load_pipeline(_write(tmp_path, "full")).durability == "full"
    assert load_pipeline(_write(tmp_path, None)).durability is None


def test_bad_durability_is_a_located_problem(tmp_path):
    with pytest.raises(PipelineError) as info:
        load_pipeline(_write(tmp_path, "fast"))
    assert "p.yaml:2:" in str(info.value) and "normal" in str(info.value)
