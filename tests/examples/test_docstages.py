"""The example document-review pipeline's stages, called directly (no engine)."""

from __future__ import annotations

import importlib.util
import json
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from treadle_cli.model import (
    DecisionKind,
    Item,
    OutcomeKind,
    ReviewData,
    StageContext,
)

PIPELINES = Path(__file__).resolve().parents[2] / "pipelines"


def _load_docstages() -> ModuleType:
    # pipelines/ is not a package: the engine imports stage modules from the YAML's folder.
    spec = importlib.util.spec_from_file_location("docstages", PIPELINES / "docstages.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


docstages = _load_docstages()


def ctx_for(
    item: Item,
    stage: str,
    *,
    outputs: dict[str, Any] | None = None,
    subtask: str | None = None,
    attempt: int = 1,
    review: ReviewData | None = None,
) -> StageContext:
    return StageContext(
        item_id=item.id,
        stage=stage,
        attempt=attempt,
        data=item.data,
        outputs=outputs or {},
        subtask=subtask,
        review=review,
    )


def run_parse(item: Item) -> dict[str, Any]:
    outcome = docstages.parse(item, ctx_for(item, "parse"))
    assert outcome.kind is OutcomeKind.COMPLETE
    return outcome.output


def run_source(item: Item, source: str, *, attempt: int = 1) -> dict[str, Any]:
    ctx = ctx_for(
        item, "enrich", outputs={"parse": run_parse(item)}, subtask=source, attempt=attempt
    )
    outcome = docstages.enrich(item, ctx)
    assert outcome.kind is OutcomeKind.COMPLETE
    return outcome.output


def run_enrich(item: Item) -> dict[str, Any]:
    return {source: run_source(item, source) for source in ("glossary", "spelling", "links")}


ONBOARDING = Item("doc-1", {"path": "docs/onboarding.md"})
RELEASE_NOTES = Item("doc-2", {"path": "docs/release-notes.md", "flaky": True})
INCIDENT = Item("doc-3", {"path": "docs/incident-report.md"})


# --------------------------------------------------------------------------- YAML


def test_pipeline_file_declares_four_stages_in_a_chain():
    spec = yaml.safe_load((PIPELINES / "document_review.yaml").read_text())
    assert spec["pipeline"] == "document-review"
    stages = spec["stages"]
    assert list(stages) == ["parse", "enrich", "review", "publish"]
    assert "needs" not in stages["parse"]
    assert stages["enrich"]["needs"] == "parse"
    assert stages["review"]["needs"] == "enrich"
    assert stages["publish"]["needs"] == "review"
    assert stages["enrich"]["retry"]["max_attempts"] == 3
    assert stages["enrich"]["retry"]["backoff"] == "1s"
    assert stages["enrich"]["concurrency"] == 3
    assert stages["review"]["uses"] == "docstages:review_summary"


def test_every_uses_names_a_callable_in_the_stage_module():
    spec = yaml.safe_load((PIPELINES / "document_review.yaml").read_text())
    for name, stage in spec["stages"].items():
        module, _, attribute = stage["uses"].partition(":")
        assert module == "docstages", name
        assert callable(getattr(docstages, attribute)), name


# -------------------------------------------------------------------------- parse


def test_parse_extracts_title_words_headings_and_links():
    output = run_parse(ONBOARDING)
    assert output["title"] == "Onboarding to the Data Platform Team"
    assert output["path"] == "docs/onboarding.md"
    assert 150 <= output["words"] <= 300
    assert output["headings"] == [
        "Onboarding to the Data Platform Team",
        "Before your first day",
        "Access and accounts",
        "Your first week",
        "Joining the rota",
        "Getting help",
    ]
    # The "# inside the repository" line is in a code block, not a heading.
    assert "inside the repository" not in output["headings"]
    assert output["links"] == [
        {"text": "latest release notes", "target": "release-notes.md"},
        {"text": "incident report", "target": "incident-report.md"},
        {"text": "Python documentation", "target": "https://docs.python.org/3/"},
    ]
    json.dumps(output)  # outputs are stored as JSON


def test_parse_counts_prose_words_and_falls_back_to_the_file_stem(tmp_path):
    doc = tmp_path / "notes.md"
    doc.write_text(
        "Some [linked words](https://example.com/a-b) here.\n\n```\nnot counted\n```\n",
        encoding="utf-8",
    )
    output = run_parse(Item("n", {"path": str(doc)}))
    assert output["title"] == "notes"
    assert output["words"] == 4
    assert output["headings"] == []
    assert output["links"] == [{"text": "linked words", "target": "https://example.com/a-b"}]


def test_parse_of_a_missing_file_raises_a_clear_error():
    item = Item("gone", {"path": "docs/no-such-document.md"})
    with pytest.raises(FileNotFoundError, match="document not found: docs/no-such-document.md"):
        docstages.parse(item, ctx_for(item, "parse"))


def test_parse_without_a_path_says_what_the_data_needs():
    item = Item("empty", {})
    with pytest.raises(ValueError, match='"path"'):
        docstages.parse(item, ctx_for(item, "parse"))


# ------------------------------------------------------------------------- enrich


def test_enrich_fans_out_into_the_three_sources():
    item = ONBOARDING
    outcome = docstages.enrich(item, ctx_for(item, "enrich", outputs={"parse": run_parse(item)}))
    assert outcome.kind is OutcomeKind.FAN_OUT
    assert [sub.name for sub in outcome.subtasks] == ["glossary", "spelling", "links"]


def test_glossary_source_finds_terms_with_definitions():
    terms = run_source(ONBOARDING, "glossary")["terms"]
    found = {entry["term"]: entry for entry in terms}
    assert list(found) == ["pipeline", "work item", "on-call", "runbook"]  # order of first use
    glossary = json.loads((PIPELINES / "sources" / "glossary.json").read_text())
    assert found["work item"]["definition"] == glossary["work item"]
    assert found["runbook"]["occurrences"] == 1
    incident = {e["term"]: e for e in run_source(INCIDENT, "glossary")["terms"]}
    assert incident["on-call"]["occurrences"] == 2
    assert "SLA" in incident and "postmortem" in incident


def test_spelling_source_reports_misspellings_with_line_and_suggestion():
    issues = run_source(ONBOARDING, "spelling")["issues"]
    assert {"word": "recieve", "suggestion": "receive", "line": 8} in issues
    assert {"word": "teh", "suggestion": "the", "line": 30} in issues
    assert {"word": "e-mail", "suggestion": "email", "line": 8} in issues
    assert len(issues) == 3


def test_spelling_keeps_case_and_brand_capitals():
    rules = docstages.load_spelling_rules()
    text = "Teh plan: push to Github, not GitHub twice.\n\n```\nteh code is ignored\n```\n"
    issues = docstages.check_spelling(text, rules)["issues"]
    assert issues == [
        {"word": "Teh", "suggestion": "The", "line": 1},
        {"word": "Github", "suggestion": "GitHub", "line": 1},
    ]


def test_links_source_reports_the_broken_link_and_skips_external_ones():
    links = run_source(INCIDENT, "links")
    assert links["ok"] == ["release-notes.md"]
    assert links["broken"] == [{"target": "runbooks/nightly-exports.md", "reason": "no such file"}]
    assert links["external"] == [
        {
            "target": "https://sre.google/sre-book/postmortem-culture/",
            "status": "not checked (offline)",
        }
    ]
    # A fragment is stripped before the file check.
    notes = run_source(Item("doc-2b", {"path": "docs/release-notes.md"}), "links")
    assert "onboarding.md#access-and-accounts" in notes["ok"]
    assert notes["broken"] == []


def test_links_outside_docs_are_broken():
    links = [
        {"text": "sources", "target": "../sources/terms.txt"},
        {"text": "top", "target": "#top"},
    ]
    result = docstages.check_links(links, docstages.DOCS)
    assert result["broken"] == [
        {"target": "../sources/terms.txt", "reason": "points outside docs/"}
    ]
    assert result["ok"] == ["#top"]


def test_flaky_links_source_fails_on_the_first_attempt_only():
    item = RELEASE_NOTES
    ctx = ctx_for(item, "enrich", outputs={"parse": run_parse(item)}, subtask="links", attempt=1)
    with pytest.raises(ConnectionError, match="link index busy, try again"):
        docstages.enrich(item, ctx)
    retried = run_source(item, "links", attempt=2)
    assert retried["broken"] == []
    # The other sources of the flaky document never fail.
    assert run_source(item, "spelling", attempt=1)["issues"]


def test_unknown_subtask_fails_the_attempt_with_a_reason():
    item = ONBOARDING
    ctx = ctx_for(item, "enrich", outputs={"parse": run_parse(item)}, subtask="thesaurus")
    outcome = docstages.enrich(item, ctx)
    assert outcome.kind is OutcomeKind.FAIL
    assert "thesaurus" in outcome.reason


# ------------------------------------------------------------------------- review


def review_ctx(item: Item, review: ReviewData | None = None) -> StageContext:
    outputs = {"parse": run_parse(item), "enrich": run_enrich(item)}
    return ctx_for(item, "review", outputs=outputs, review=review)


def test_review_summary_waits_for_a_human_with_a_summary():
    outcome = docstages.review_summary(INCIDENT, review_ctx(INCIDENT))
    assert outcome.kind is OutcomeKind.NEEDS_REVIEW
    assert outcome.prompt.startswith("Publish doc-3 (")
    assert "Previously rejected" not in outcome.prompt
    data = outcome.data
    assert data["title"] == "Incident Report: Delayed Nightly Exports"
    assert 150 <= data["words"] <= 300
    assert data["headings"] == 6
    assert data["glossary_terms"] == ["on-call", "SLA", "runbook", "backoff", "postmortem"]
    assert "line 24: definately -> definitely" in data["spelling_issues"]
    assert data["broken_links"] == ["runbooks/nightly-exports.md (no such file)"]
    json.dumps(data)


def test_review_summary_repeats_the_previous_rejection_reason():
    rejection = ReviewData(
        decision=DecisionKind.REJECTED,
        by="alice",
        at=datetime(2024, 3, 15, tzinfo=UTC),
        reason="fix the runbook link first",
        item_id="doc-3",
        stage="review",
    )
    outcome = docstages.review_summary(INCIDENT, review_ctx(INCIDENT, rejection))
    assert outcome.kind is OutcomeKind.NEEDS_REVIEW
    assert "Previously rejected by alice: fix the runbook link first." in outcome.prompt
    assert outcome.data["previous_rejection"] == "fix the runbook link first"


# ------------------------------------------------------------------------ publish


def publish_ctx(item: Item, review_output: Any) -> StageContext:
    outputs = {
        "parse": run_parse(item),
        "enrich": run_enrich(item),
        "review": review_output,
    }
    return ctx_for(item, "publish", outputs=outputs)


def test_publish_writes_html_and_json(tmp_path):
    item = Item("doc-2", {"path": "docs/release-notes.md", "out": str(tmp_path)})
    outcome = docstages.publish(item, publish_ctx(item, None))
    assert outcome.kind is OutcomeKind.COMPLETE
    html_path, json_path = tmp_path / "doc-2.html", tmp_path / "doc-2.json"
    assert outcome.output == {"html": str(html_path), "json": str(json_path)}
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "doc-2.html",
        "doc-2.json",
    ]  # no temp files

    page = html_path.read_text(encoding="utf-8")
    assert "<title>Release Notes: Exporter 2.4.0</title>" in page
    assert "<h1>Release Notes: Exporter 2.4.0</h1>" in page
    assert page.count("<h1>") == 1  # the document's own title is not repeated
    assert "<h2>Highlights</h2>" in page
    assert "<strong>Parallel uploads.</strong>" in page
    assert '<a href="onboarding.md#access-and-accounts">onboarding guide</a>' in page
    assert "<ol>" in page and "<li>Stop the scheduler.</li>" in page
    assert '<section class="glossary">' in page and "<dt>fan-out</dt>" in page

    record = json.loads(json_path.read_text(encoding="utf-8"))
    assert record["item"] == "doc-2"
    assert record["title"] == "Release Notes: Exporter 2.4.0"
    assert set(record["outputs"]) == {"parse", "enrich", "review"}
    assert record["outputs"]["enrich"]["links"]["external"][0]["status"] == "not checked (offline)"


def test_publish_uses_the_title_of_an_edited_review_output(tmp_path):
    item = Item("doc-1", {"path": "docs/onboarding.md", "out": str(tmp_path / "site")})
    outcome = docstages.publish(item, publish_ctx(item, {"title": "Welcome <aboard>"}))
    page = Path(outcome.output["html"]).read_text(encoding="utf-8")
    assert "<h1>Welcome &lt;aboard&gt;</h1>" in page
    assert "Onboarding to the Data Platform Team" not in page
    assert "<pre><code># inside the repository\nmake install" in page
    assert json.loads(Path(outcome.output["json"]).read_text())["title"] == "Welcome <aboard>"


def test_publish_defaults_to_demo_out_under_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    outcome = docstages.publish(ONBOARDING, publish_ctx(ONBOARDING, None))
    assert outcome.output["html"] == str(Path(".demo/out/doc-1.html"))
    assert (tmp_path / ".demo" / "out" / "doc-1.html").is_file()
    assert (tmp_path / ".demo" / "out" / "doc-1.json").is_file()


def test_later_stages_reparse_when_parse_output_is_not_passed(tmp_path):
    # If the engine hands a stage only its direct needs, the stages still work.
    item = Item("doc-3", {"path": "docs/incident-report.md", "out": str(tmp_path)})
    ctx = ctx_for(item, "enrich", subtask="links")
    assert docstages.enrich(item, ctx).output["broken"]
    review = docstages.review_summary(item, ctx_for(item, "review"))
    assert review.data["title"] == "Incident Report: Delayed Nightly Exports"
    published = docstages.publish(item, ctx_for(item, "publish"))
    page = Path(published.output["html"]).read_text(encoding="utf-8")
    assert "<dt>postmortem</dt>" in page
