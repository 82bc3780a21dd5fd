"""A stage interrupted inside a live process is handed back, not left running."""

import pytest

from treadle_cli import Item, SqliteStateStore, Workflow


def test_keyboard_interrupt_releases_the_stage(tmp_path):
    calls = []

    def slow(item, ctx):
        calls.append(ctx.attempt)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return {"ok": True}

    wf = Workflow.builder("p").stage("a", slow).build()
    store = SqliteStateStore.open(tmp_path / "t.db")
    with pytest.raises(KeyboardInterrupt):
        wf.advance(Item("i", {}), store)
    assert store.get_stages("i")[0].status == "pending"
    st = wf.advance("i", store)  # the same live process can run it again at once
    assert st.is_complete() and calls == [1, 2]
