"""Stages of the example ``document-review`` pipeline (``document_review.yaml``).

Each stage is a plain function ``(item, ctx)``; the item's payload names a Markdown file::

    {"path": "docs/onboarding.md"}                    # relative to this folder
    {"path": "docs/release-notes.md", "flaky": true}  # the links source fails once
    {"path": "...", "out": "some/dir"}                # where publish writes (default .demo/out)

Everything runs offline on files shipped next to this module: the documents in ``docs/`` and
the data the enrich sources read in ``sources/``.
"""

from __future__ import annotations

import html
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from treadle_cli.model import StageContext, StageOutcome, SubTask, WorkItem

HERE = Path(__file__).resolve().parent
DOCS = HERE / "docs"
SOURCES = HERE / "sources"

#: The sources ``enrich`` fans out into, in the order they are listed.
ENRICH_SOURCES = ("glossary", "spelling", "links")

_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")
# [text](target) or [text](target "title"), but not an image ![alt](src).
_LINK = re.compile(r"(?<!!)\[([^\]]+)\]\(\s*([^)\s]+)(?:\s+\"[^\"]*\")?\s*\)")
_INLINE_CODE = re.compile(r"`[^`]*`")
_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://\S+", re.IGNORECASE)
_WORD = re.compile(r"[A-Za-z0-9]+(?:['’-][A-Za-z0-9]+)*")
_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)


# --------------------------------------------------------------------------- parse


def parse(item: WorkItem, ctx: StageContext) -> StageOutcome:
    """Read the item's Markdown file: title, word count, headings and links."""
    path = document_path(item.data)
    ctx.log.info("parsing %s", path)
    return StageOutcome.complete(parse_document(path))


def document_path(data: Any) -> Path:
    """The file named by ``data["path"]``; a relative path is taken from this folder."""
    if not isinstance(data, dict) or not data.get("path"):
        raise ValueError('item data must name a document, e.g. {"path": "docs/onboarding.md"}')
    path = Path(data["path"])
    if not path.is_absolute():
        path = HERE / path
    if not path.is_file():
        raise FileNotFoundError(
            f"document not found: {data['path']} (looked for {path}); "
            "give a path relative to the pipeline folder"
        )
    return path


def parse_document(path: Path) -> dict[str, Any]:
    """The facts later stages need; they re-read the text itself from ``path``."""
    text = path.read_text(encoding="utf-8")
    headings: list[str] = []
    title = None
    for line in _outside_code(text.splitlines()):
        match = _HEADING.match(line)
        if match:
            headings.append(match.group(2))
            if title is None and len(match.group(1)) == 1:
                title = match.group(2)
    links = [
        {"text": text_, "target": target}
        for line in _outside_code(text.splitlines())
        for text_, target in _LINK.findall(line)
    ]
    words = sum(len(_WORD.findall(line)) for _, line in _prose_lines(text))
    return {
        "title": title or path.stem,
        "words": words,
        "headings": headings,
        "links": links,
        "path": _display_path(path),
    }


def _display_path(path: Path) -> str:
    try:
        return path.relative_to(HERE).as_posix()
    except ValueError:
        return str(path)


def _source_file(parsed: dict[str, Any]) -> Path:
    """The document a parse output describes (``path`` is relative to this folder)."""
    return HERE / parsed["path"]


def _outside_code(lines: list[str]) -> list[str]:
    """The lines with fenced code blocks blanked out (so line numbers still match)."""
    out: list[str] = []
    in_code = False
    for line in lines:
        if _FENCE.match(line):
            in_code = not in_code
            out.append("")
        else:
            out.append("" if in_code else line)
    return out


def _prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, prose) pairs: no code, no link targets, no bare URLs."""
    result = []
    for number, line in enumerate(_outside_code(text.splitlines()), start=1):
        line = _LINK.sub(lambda m: m.group(1), line)
        line = _INLINE_CODE.sub(" ", line)
        line = _URL.sub(" ", line)
        result.append((number, line))
    return result


# -------------------------------------------------------------------------- enrich


def enrich(item: WorkItem, ctx: StageContext) -> StageOutcome:
    """Fan out into one subtask per local source, then do that source's work.

    The engine calls this once with ``ctx.subtask`` None (the fan-out), then once per
    subtask; the stage's output is ``{subtask name: that subtask's output}``.
    """
    if ctx.subtask is None:
        return StageOutcome.fan_out([SubTask(name) for name in ENRICH_SOURCES])
    parsed = _parsed(item, ctx)
    source = _source_file(parsed)
    text = source.read_text(encoding="utf-8")
    if ctx.subtask == "glossary":
        return StageOutcome.complete(find_glossary_terms(text))
    if ctx.subtask == "spelling":
        return StageOutcome.complete(check_spelling(text))
    if ctx.subtask == "links":
        if item.data.get("flaky") and ctx.attempt == 1:
            # Deliberate and deterministic: the first attempt fails, the retry succeeds,
            # so the demo shows a retry under the stage's retry policy.
            raise ConnectionError("link index busy, try again")
        return StageOutcome.complete(check_links(parsed["links"], source.parent))
    return StageOutcome.fail(f"unknown enrich source {ctx.subtask!r}")


def _parsed(item: WorkItem, ctx: StageContext) -> dict[str, Any]:
    """The parse stage's output, re-parsing only if the engine did not pass it on."""
    parsed = ctx.outputs.get("parse")
    if isinstance(parsed, dict) and "path" in parsed:
        return parsed
    return parse_document(document_path(item.data))


def load_glossary(path: Path = SOURCES / "glossary.json") -> dict[str, str]:
    """Term -> definition."""
    return json.loads(path.read_text(encoding="utf-8"))


def find_glossary_terms(text: str, glossary: dict[str, str] | None = None) -> dict[str, Any]:
    """Glossary terms used in the prose, in order of first use, with their definitions."""
    glossary = load_glossary() if glossary is None else glossary
    prose = "\n".join(line for _, line in _prose_lines(text))
    found = []
    for term, definition in glossary.items():
        words = r"\s+".join(re.escape(part) for part in term.split())
        matches = list(re.finditer(rf"(?<![\w-]){words}(?:s|es)?(?![\w-])", prose, re.IGNORECASE))
        if matches:
            found.append((matches[0].start(), term, definition, len(matches)))
    found.sort()
    return {
        "terms": [
            {"term": term, "definition": definition, "occurrences": count}
            for _, term, definition, count in found
        ]
    }


def load_spelling_rules(path: Path = SOURCES / "terms.txt") -> dict[str, str]:
    """Lower-cased found spelling -> preferred spelling, from ``found -> preferred`` lines."""
    rules = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        found, sep, preferred = line.partition("->")
        if not sep or not found.strip() or not preferred.strip():
            raise ValueError(f"{path}:{number}: expected 'found -> preferred', got {raw!r}")
        rules[found.strip().lower()] = preferred.strip()
    return rules


def check_spelling(text: str, rules: dict[str, str] | None = None) -> dict[str, Any]:
    """Every word that has a preferred spelling, with its line number and the suggestion."""
    rules = load_spelling_rules() if rules is None else rules
    issues = []
    for number, line in _prose_lines(text):
        for word in _WORD.findall(line):
            preferred = rules.get(word.lower())
            if preferred is None:
                continue
            suggestion = _match_case(word, preferred)
            if word != suggestion:
                issues.append({"word": word, "suggestion": suggestion, "line": number})
    return {"issues": issues}


def _match_case(word: str, preferred: str) -> str:
    """Keep a brand's own capitals; otherwise follow the word's ("Teh" -> "The")."""
    if preferred != preferred.lower():
        return preferred
    if word.isupper() and len(word) > 1:
        return preferred.upper()
    if word[:1].isupper():
        return preferred[:1].upper() + preferred[1:]
    return preferred


def check_links(links: list[dict[str, str]], base: Path, root: Path = DOCS) -> dict[str, Any]:
    """Relative targets must be files under ``root``; external links are listed, not fetched."""
    ok: list[str] = []
    broken: list[dict[str, str]] = []
    external: list[dict[str, str]] = []
    root = root.resolve()
    for link in links:
        target = link["target"]
        if _SCHEME.match(target):
            external.append({"target": target, "status": "not checked (offline)"})
            continue
        file_part = target.split("#", 1)[0]
        if not file_part:  # an in-page anchor such as "#summary"
            ok.append(target)
            continue
        resolved = (base / file_part).resolve()
        if not resolved.is_relative_to(root):
            broken.append({"target": target, "reason": "points outside docs/"})
        elif not resolved.is_file():
            broken.append({"target": target, "reason": "no such file"})
        else:
            ok.append(target)
    return {"ok": ok, "broken": broken, "external": external}


# -------------------------------------------------------------------------- review


def review_summary(item: WorkItem, ctx: StageContext) -> StageOutcome:
    """A human gate whose data is a summary a reviewer can decide on at a glance.

    Run again after a rejection, the prompt repeats why it was rejected.
    """
    parsed = _parsed(item, ctx)
    enriched = ctx.outputs.get("enrich") or {}
    glossary = enriched.get("glossary") or {}
    spelling = enriched.get("spelling") or {}
    links = enriched.get("links") or {}
    data = {
        "title": parsed["title"],
        "path": parsed["path"],
        "words": parsed["words"],
        "headings": len(parsed["headings"]),
        "glossary_terms": [entry["term"] for entry in glossary.get("terms", [])],
        "spelling_issues": [
            f"line {issue['line']}: {issue['word']} -> {issue['suggestion']}"
            for issue in spelling.get("issues", [])
        ],
        "broken_links": [
            f"{link['target']} ({link['reason']})" for link in links.get("broken", [])
        ],
    }
    prompt = f"Publish {ctx.item_id} ({parsed['title']!r})? Check the summary below."
    if ctx.review is not None and ctx.review.decision == "rejected":
        by = f" by {ctx.review.by}" if ctx.review.by else ""
        prompt = f"Previously rejected{by}: {ctx.review.reason}. {prompt}"
        data["previous_rejection"] = ctx.review.reason
    return StageOutcome.needs_review(prompt, data)


# ------------------------------------------------------------------------- publish


def publish(item: WorkItem, ctx: StageContext) -> StageOutcome:
    """Write ``<out>/<item id>.html`` and ``<out>/<item id>.json``, each atomically."""
    parsed = _parsed(item, ctx)
    reviewed = ctx.outputs.get("review")
    # An approval may carry an edited output; its title wins over the document's.
    title = reviewed["title"] if isinstance(reviewed, dict) and reviewed.get("title") else None
    title = title or parsed["title"]
    enriched = ctx.outputs.get("enrich") or {}
    glossary = (enriched.get("glossary") or {}).get("terms")
    text = _source_file(parsed).read_text(encoding="utf-8")
    if glossary is None:
        glossary = find_glossary_terms(text)["terms"]

    out_dir = Path(item.data.get("out", ".demo/out"))
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", ctx.item_id)
    html_path = out_dir / f"{stem}.html"
    json_path = out_dir / f"{stem}.json"
    _write_atomic(html_path, render_page(title, text, glossary))
    record = {"item": ctx.item_id, "title": title, "data": item.data, "outputs": ctx.outputs}
    _write_atomic(json_path, json.dumps(record, indent=2, default=str) + "\n")
    ctx.log.info("published %s", html_path)
    return StageOutcome.complete({"html": str(html_path), "json": str(json_path)})


def _write_atomic(path: Path, content: str) -> None:
    """Write next to ``path`` and rename over it, so readers never see half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(content)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def render_page(title: str, markdown: str, glossary: list[dict[str, Any]]) -> str:
    """A small standalone HTML page: the title, the document and a glossary section."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        '<head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:44em;margin:2em auto;line-height:1.5}"
        "pre{background:#f4f4f4;padding:.8em;overflow-x:auto}dt{font-weight:bold}</style>",
        "</head>",
        "<body>",
        f"<h1>{html.escape(title)}</h1>",
        markdown_to_html(markdown, drop_title=True),
    ]
    if glossary:
        parts.append('<section class="glossary">\n<h2>Glossary</h2>\n<dl>')
        for entry in glossary:
            parts.append(f"<dt>{html.escape(entry['term'])}</dt>")
            parts.append(f"<dd>{html.escape(entry['definition'])}</dd>")
        parts.append("</dl>\n</section>")
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


def markdown_to_html(markdown: str, *, drop_title: bool = False) -> str:
    """The Markdown subset the sample documents use: headings, paragraphs, lists, code.

    ``drop_title`` leaves out the first level-1 heading (the page prints its own title).
    """
    out: list[str] = []
    paragraph: list[str] = []
    list_tag: str | None = None
    code: list[str] | None = None

    def flush() -> None:
        nonlocal list_tag
        if paragraph:
            out.append(f"<p>{_inline(' '.join(paragraph))}</p>")
            paragraph.clear()
        if list_tag:
            out.append(f"</{list_tag}>")
            list_tag = None

    for line in markdown.splitlines():
        if code is not None:
            if _FENCE.match(line):
                out.append(_code_block(code))
                code = None
            else:
                code.append(line)
            continue
        if _FENCE.match(line):
            flush()
            code = []
            continue
        heading = _HEADING.match(line)
        bullet = re.match(r"^\s*[-*+]\s+(.*)$", line)
        entry = bullet or re.match(r"^\s*\d+[.)]\s+(.*)$", line)
        if not line.strip():
            flush()
        elif heading:
            flush()
            level = len(heading.group(1))
            if drop_title and level == 1:
                drop_title = False
                continue
            out.append(f"<h{level}>{_inline(heading.group(2))}</h{level}>")
        elif entry:
            tag = "ul" if bullet else "ol"
            if paragraph or list_tag != tag:
                flush()
                out.append(f"<{tag}>")
                list_tag = tag
            out.append(f"<li>{_inline(entry.group(1))}</li>")
        elif list_tag and line.startswith((" ", "\t")) and out[-1].endswith("</li>"):
            # A continuation line of the current list item.
            out[-1] = out[-1][: -len("</li>")] + " " + _inline(line.strip()) + "</li>"
        else:
            if list_tag:
                flush()
            paragraph.append(line.strip())
    if code is not None:
        out.append(_code_block(code))
    flush()
    return "\n".join(out)


def _code_block(lines: list[str]) -> str:
    body = html.escape("\n".join(lines))
    return f"<pre><code>{body}</code></pre>"


def _inline(text: str) -> str:
    """Escape, then render `code`, links, **strong** and *emphasis*."""
    rendered = []
    for piece in re.split(r"(`[^`]*`)", text):
        if len(piece) > 1 and piece.startswith("`") and piece.endswith("`"):
            rendered.append(f"<code>{html.escape(piece[1:-1])}</code>")
        else:
            rendered.append(_inline_prose(piece))
    return "".join(rendered)


def _inline_prose(text: str) -> str:
    # Links are set aside behind placeholders so escaping and emphasis leave their URLs alone.
    links: list[str] = []

    def stash(match: re.Match[str]) -> str:
        href = html.escape(match.group(2), quote=True)
        links.append(f'<a href="{href}">{html.escape(match.group(1))}</a>')
        return f"\x00{len(links) - 1}\x00"

    text = html.escape(_LINK.sub(stash, text), quote=False)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    text = re.sub(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])", r"<em>\1</em>", text)
    return re.sub(r"\x00(\d+)\x00", lambda m: links[int(m.group(1))], text)
