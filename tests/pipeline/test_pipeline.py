"""Pipeline files: loading, import resolution, every located problem, the builder."""

from __future__ import annotations

import functools
import hashlib
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from treadle_cli.errors import CycleError, PipelineError, StageImportError
from treadle_cli.model import Item, OutcomeKind, RetryPolicy, Stage, StageContext, StageOutcome
from treadle_cli.pipeline import (
    Pipeline,
    StageSpec,
    build_pipeline,
    load_pipeline,
    parse_duration,
    resolve_import,
)
from treadle_cli.stages import Approval, approval

MYSTAGES = """\
from treadle_cli import Stage, StageOutcome

VERSION = "{version}"


class Enrich(Stage):
    version = VERSION

    def __init__(self, lang="en", depth=1):
        self.lang = lang
        self.depth = depth

    def execute(self, item, ctx):
        return StageOutcome.complete({{"lang": self.lang}})


class Named(Stage):
    name = "chosen-by-author"

    def execute(self, item, ctx):
        return StageOutcome.complete()


def parse(item, ctx):
    return {{"parsed": True}}


def tag(item, ctx, label="none"):
    return {{"label": label}}


def one_arg(item):
    return None


publish = Enrich(lang="fr")
named = Named()
NOT_A_STAGE = 42


class Plain:
    pass
"""


@pytest.fixture(autouse=True)
def forget_test_modules(tmp_path):
    """Modules imported from tmp_path must not leak into the next test."""
    yield
    root = str(tmp_path)
    for name, module in list(sys.modules.items()):
        if (getattr(module, "__file__", None) or "").startswith(root):
            del sys.modules[name]


def write(folder: Path, text: str, name: str = "pipeline.yaml") -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def stages_module(folder: Path, version: str = "1", name: str = "mystages.py") -> None:
    write(folder, MYSTAGES.format(version=version), name)


def problems_of(path: Path) -> list[str]:
    with pytest.raises(PipelineError) as info:
        load_pipeline(path)
    return info.value.problems


def ctx(stage: str = "review", outputs: dict | None = None) -> StageContext:
    return StageContext(item_id="doc-1", stage=stage, attempt=1, data={}, outputs=outputs or {})


# ----------------------------------------------------------------- a valid file

VALID = """\
pipeline: document-review
description: Parse, enrich and publish documents.
stages:
  parse:
    uses: mystages:parse
  enrich:
    uses: mystages:Enrich
    needs: [parse]
    retry: {max_attempts: 3, backoff: 2s, max_backoff: 1m}
    concurrency: 8
    timeout: 30s
    with: {lang: de, depth: 2}
    description: Adds language data.
  review:
    uses: treadle_cli.stages:approval
    needs: enrich
  publish:
    uses: mystages:publish
    needs: [review]
    review: always
    retry: {max_attempts: 2}
"""


def test_a_valid_file_loads_with_every_setting(tmp_path):
    stages_module(tmp_path)
    path = write(tmp_path, VALID)

    pipeline = load_pipeline(path)

    assert isinstance(pipeline, Pipeline)
    assert pipeline.name == "document-review"
    assert pipeline.description == "Parse, enrich and publish documents."
    assert pipeline.order == ["parse", "enrich", "review", "publish"]
    assert pipeline.path == str(path.resolve())
    assert pipeline.hash == hashlib.sha256(path.read_bytes()).hexdigest()

    parse, enrich, review, publish = (pipeline.stages[n] for n in pipeline.order)
    assert parse.needs == () and parse.uses == "mystages:parse" and parse.line == 4
    assert parse.impl({"id": "x"}, None) == {"parsed": True}
    assert parse.retry == RetryPolicy() and parse.retry.max_attempts == 1
    assert (parse.timeout, parse.concurrency, parse.review) == (None, 4, False)

    assert enrich.needs == ("parse",)
    assert enrich.retry == RetryPolicy(max_attempts=3, backoff=2.0, max_backoff=60.0)
    assert (enrich.timeout, enrich.concurrency, enrich.review) == (30.0, 8, False)
    assert isinstance(enrich.impl, Stage) and type(enrich.impl).__name__ == "Enrich"
    assert (enrich.impl.lang, enrich.impl.depth) == ("de", 2)  # `with:` reached __init__
    assert enrich.impl.name == "enrich"
    assert enrich.line == 6

    assert review.needs == ("enrich",)  # a single string is a one-element list
    assert isinstance(review.impl, Approval)

    assert publish.review is True
    assert publish.retry == RetryPolicy(max_attempts=2, backoff=1.0, max_backoff=300.0)
    assert publish.impl.lang == "fr"  # a module-level instance, used as it is


def test_graph_has_a_node_per_stage_and_an_edge_from_each_need(tmp_path):
    stages_module(tmp_path)
    pipeline = load_pipeline(write(tmp_path, VALID))

    g = pipeline.graph()

    assert list(g.nodes) == pipeline.order
    assert set(g.edges) == {("parse", "enrich"), ("enrich", "review"), ("review", "publish")}
    assert g.nodes["enrich"]["spec"] is pipeline.stages["enrich"]


def test_topological_order_breaks_ties_by_declaration_order(tmp_path):
    stages_module(tmp_path)
    path = write(
        tmp_path,
        """\
        pipeline: p
        stages:
          late: {uses: mystages:parse, needs: [early]}
          b: {uses: mystages:parse}
          early: {uses: mystages:parse}
          a: {uses: mystages:parse}
        """,
    )
    assert load_pipeline(path).order == ["b", "early", "late", "a"]


def test_imports_resolve_relative_to_each_yaml_folder_first(tmp_path):
    # Both folders hold a `mystages.py`: each pipeline must get its own, not the cached one.
    versions = []
    for version in ("1", "2"):
        stages_module(tmp_path / version, version=version)
        path = write(tmp_path / version, "pipeline: p\nstages:\n  s: {uses: mystages:Enrich}\n")
        versions.append(load_pipeline(path).stages["s"].impl.version)

    assert versions == ["1", "2"]
    assert resolve_import("mystages:VERSION", str(tmp_path / "1")) == "1"
    assert str(tmp_path / "1") not in sys.path  # the folder is on sys.path only while importing


def test_dotted_form_and_packages_resolve(tmp_path):
    stages_module(tmp_path / "pkg", name="mod.py")
    write(tmp_path, "", "pkg/__init__.py")
    stages_module(tmp_path)
    path = write(
        tmp_path,
        """\
        pipeline: p
        stages:
          a: {uses: mystages.parse}
          b: {uses: pkg.mod.Enrich}
          c: {uses: "pkg.mod:Enrich"}
        """,
    )
    pipeline = load_pipeline(path)
    assert pipeline.stages["a"].impl(None, None) == {"parsed": True}
    assert type(pipeline.stages["b"].impl).__name__ == "Enrich"
    assert type(pipeline.stages["c"].impl).__module__ == "pkg.mod"


def test_with_on_a_function_becomes_a_partial(tmp_path):
    stages_module(tmp_path)
    path = write(tmp_path, "pipeline: p\nstages:\n  t: {uses: mystages:tag, with: {label: y}}\n")
    impl = load_pipeline(path).stages["t"].impl
    assert isinstance(impl, functools.partial)
    assert impl(Item("a"), ctx()) == {"label": "y"}


def test_a_stage_instance_keeps_a_name_its_author_set(tmp_path):
    stages_module(tmp_path)
    path = write(tmp_path, "pipeline: p\nstages:\n  n: {uses: mystages:named}\n")
    assert load_pipeline(path).stages["n"].impl.name == "chosen-by-author"


# ------------------------------------------------------------------ every problem


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            "pipeline: p\nstages: [a\n",
            "3: invalid YAML: expected ',' or ']', but got '<stream end>'"
            " (while parsing a flow sequence started on line 2)",
        ),
        (
            "pipeline: p\nstages: {a: {uses: mystages:parse}}\n---\nmore: 1\n",
            "3: invalid YAML: expected a single document in the stream, but found another document",
        ),
        ("", "1: the file is empty; expected a mapping with `pipeline` and `stages`"),
        (
            "# only a comment\n",
            "1: the file is empty; expected a mapping with `pipeline` and `stages`",
        ),
        (
            "- a\n- b\n",
            "1: the top level is not a mapping; expected a mapping with `pipeline` and `stages`",
        ),
        ("stages:\n  a: {uses: mystages:parse}\n", "1: missing `pipeline` (the pipeline's name)"),
        ("pipeline: p\n", "1: `stages` must be a non-empty mapping of stage name -> stage"),
        (
            "pipeline: p\nstages: {}\n",
            "2: `stages` must be a non-empty mapping of stage name -> stage",
        ),
        ("pipeline: p\nstages:\n  a:\n", "3: stage 'a' must be a mapping with at least `uses`"),
        (
            "pipeline: my/pipe\nstages:\n  a: {uses: mystages:parse}\n",
            "1: bad pipeline name 'my/pipe': use letters, digits, - and _",
        ),
        (
            "pipeline: p\nstages:\n  a/b: {uses: mystages:parse}\n",
            "3: bad stage name 'a/b': use letters, digits, - and _",
        ),
        (
            "pipeline: p\ncolour: red\nstages:\n  a: {uses: mystages:parse}\n",
            "2: unknown key 'colour' at the top level; allowed: pipeline, description, durability, stages",
        ),
        (
            "pipeline: p\nstages:\n  a:\n    uses: mystages:parse\n    retries: 3\n",
            "5: unknown key 'retries' in stage 'a'; allowed: uses, needs, retry, concurrency, "
            "timeout, review, with, description",
        ),
        (
            "pipeline: p\nstages:\n  a:\n    uses: mystages:parse\n    retry: {tries: 3}\n",
            "5: unknown key 'tries' in `retry` of stage 'a'; allowed: max_attempts, backoff, max_backoff",
        ),
        (
            "pipeline: p\nstages:\n  a: {uses: mystages:parse}\n  a: {uses: mystages:tag}\n",
            "4: duplicate stage 'a' (first defined on line 3)",
        ),
        (
            "pipeline: p\nstages:\n  a:\n    uses: mystages:parse\n    uses: mystages:tag\n",
            "5: duplicate key 'uses' in stage 'a' (first on line 4)",
        ),
        (
            "pipeline: p\nstages:\n  a:\n    needs: []\n",
            "3: stage 'a' is missing `uses` (e.g. uses: mystages:a)",
        ),
        (
            "pipeline: p\nstages:\n  parse: {uses: mystages:parse}\n  b:\n    uses: mystages:parse\n"
            "    needs:\n      - parse\n      - pars\n",
            "8: stage 'b' needs unknown stage 'pars' (did you mean 'parse'?)",
        ),
        (
            "pipeline: p\nstages:\n  a: {uses: mystages:parse, needs: {x: 1}}\n",
            "3: `needs` of stage 'a' must be a stage name or a list of names",
        ),
        (
            "pipeline: p\nstages:\n  a:\n    uses: mystages:parse\n    timeout: soon\n",
            "5: `timeout` of stage 'a': not a duration: 'soon' (use e.g. 500ms, 2s, 1.5m, 1h, 1d)",
        ),
        (
            "pipeline: p\nstages:\n  a:\n    uses: mystages:parse\n    timeout: 0s\n",
            "5: `timeout` of stage 'a': must be more than 0",
        ),
        (
            "pipeline: p\nstages:\n  a:\n    uses: mystages:parse\n    retry:\n      backoff: -2s\n",
            "6: `backoff` in `retry` of stage 'a': a duration cannot be negative: '-2s'",
        ),
        (
            "pipeline: p\nstages:\n  a:\n    uses: mystages:parse\n    retry: {max_attempts: three}\n",
            "5: `max_attempts` in `retry` of stage 'a': must be an integer >= 1, got 'three'",
        ),
        (
            "pipeline: p\nstages:\n  a:\n    uses: mystages:parse\n    retry: 3\n",
            "5: `retry` of stage 'a' must be a mapping of max_attempts, backoff, max_backoff",
        ),
        (
            "pipeline: p\nstages:\n  a:\n    uses: mystages:parse\n    concurrency: 0\n",
            "5: `concurrency` of stage 'a': must be an integer >= 1, got 0",
        ),
        (
            "pipeline: p\nstages:\n  a:\n    uses: mystages:parse\n    review: sometimes\n",
            "5: `review` of stage 'a': must be `always` or `never`, got 'sometimes'",
        ),
        (
            "pipeline: p\nstages:\n  a:\n    uses: mystages:Enrich\n    with: [de]\n",
            "5: `with` of stage 'a': must be a mapping of keyword arguments",
        ),
        (
            "pipeline: p\nstages:\n  a:\n    uses: mystages:Enrich\n    with:\n      lang: de\n"
            "      lang: fr\n",
            "7: duplicate key 'lang' in `with` of stage 'a' (first on line 6)",
        ),
        (
            "pipeline: p\nstages:\n  a:\n    uses: mystages:parse\n    description: [x]\n",
            "5: `description` of stage 'a': must be a string, got ['x']",
        ),
        (
            "pipeline: p\nstages:\n  a:\n    uses: mystages:parse\n    timeout: !!python/name:os.system\n",
            "5: cannot read `timeout` of stage 'a': could not determine a constructor for the tag "
            "'tag:yaml.org,2002:python/name:os.system'",
        ),
    ],
)
def test_each_problem_is_located(tmp_path, text, problem):
    stages_module(tmp_path)
    path = write(tmp_path, text)
    with pytest.raises(PipelineError) as info:
        load_pipeline(path)
    assert info.value.problems == [f"{path}:{problem}"]
    assert info.value.message == f"{path}:{problem}"  # one problem: it is the message
    assert info.value.path == str(path)
    assert info.value.hint == f"fix the file and run `treadle validate {path}`"


@pytest.mark.parametrize(
    ("uses", "problem"),
    [
        (
            "nosuchmodule:parse",
            "cannot import 'nosuchmodule:parse': ModuleNotFoundError: No module named 'nosuchmodule'",
        ),
        (
            "mystages:nope",
            "cannot import 'mystages:nope': AttributeError: module 'mystages' has no attribute 'nope'",
        ),
        ("broken:thing", "cannot import 'broken:thing': RuntimeError: broken on purpose"),
        (
            "badsyntax:x",
            "cannot import 'badsyntax:x': SyntaxError: invalid syntax (badsyntax.py, line 1)",
        ),
        ("exits:x", "cannot import 'exits:x': SystemExit: 3"),
        ("mystages", "bad import path 'mystages': use 'module:attribute' or 'module.attribute'"),
    ],
)
def test_failing_imports_are_located_with_the_exception_text(tmp_path, uses, problem):
    stages_module(tmp_path)
    write(tmp_path, "raise RuntimeError('broken on purpose')\n", "broken.py")
    write(tmp_path, "def (:\n", "badsyntax.py")
    write(tmp_path, "import sys\nsys.exit(3)\n", "exits.py")
    path = write(tmp_path, f"pipeline: p\nstages:\n  a:\n    uses: {uses}\n")

    with pytest.raises(StageImportError) as info:  # every problem is an import: the subclass
        load_pipeline(path)
    assert info.value.problems == [f"{path}:4: stage 'a': {problem}"]


@pytest.mark.parametrize(
    ("stage", "problem"),
    [
        (
            "uses: mystages:NOT_A_STAGE",
            "'mystages:NOT_A_STAGE' is a int, not a Stage subclass, Stage instance or function (item, ctx)",
        ),
        (
            "uses: mystages:Plain",
            "'mystages:Plain' is a class, not a Stage subclass, Stage instance or function (item, ctx)",
        ),
        (
            "{uses: mystages:Enrich, with: {colour: red}}",
            "cannot create Enrich(colour='red'): TypeError: Enrich.__init__() got an unexpected "
            "keyword argument 'colour'",
        ),
        (
            "{uses: mystages:one_arg}",
            "'mystages:one_arg' cannot be called as (item, ctx): too many positional arguments",
        ),
        (
            "{uses: mystages:tag, with: {lable: y}}",
            "'mystages:tag' cannot be called as (item, ctx, lable='y'): got an unexpected keyword "
            "argument 'lable'",
        ),
        (
            "{uses: 'treadle_cli.stages:approval', with: {prompt: 'Go {where}?'}}",
            "cannot create Approval(prompt='Go {where}?'): ValueError: prompt 'Go {where}?' may only "
            "use {item_id} and {stage}: KeyError('where')",
        ),
    ],
)
def test_a_uses_that_is_not_a_stage_is_located(tmp_path, stage, problem):
    stages_module(tmp_path)
    path = write(tmp_path, f"pipeline: p\nstages:\n  a:\n    {stage}\n")
    assert problems_of(path) == [f"{path}:4: stage 'a': {problem}"]


def test_with_on_a_stage_instance_is_a_problem(tmp_path):
    stages_module(tmp_path)
    path = write(
        tmp_path, "pipeline: p\nstages:\n  a:\n    uses: mystages:publish\n    with: {a: 1}\n"
    )
    assert problems_of(path) == [
        f"{path}:5: stage 'a': `with` needs a Stage class or a function; "
        "'mystages:publish' is a Stage instance"
    ]


def test_every_problem_is_reported_at_once_in_line_order(tmp_path):
    stages_module(tmp_path)
    path = write(
        tmp_path,
        """\
        pipeline: bad name
        stages:
          parse:
            uses: nosuchmodule:parse
            colour: red
          enrich:
            uses: mystages:Enrich
            needs: [parse, ghost]
            timeout: 5 minutes
          parse:
            uses: mystages:parse
          publish:
            uses: mystages:parse
            concurrency: -1
        """,
    )
    with pytest.raises(PipelineError) as info:
        load_pipeline(path)
    error = info.value
    assert type(error) is PipelineError
    assert error.message == f"{path}: 7 problems"
    assert error.problems == [
        f"{path}:1: bad pipeline name 'bad name': use letters, digits, - and _",
        f"{path}:4: stage 'parse': cannot import 'nosuchmodule:parse': "
        "ModuleNotFoundError: No module named 'nosuchmodule'",
        f"{path}:5: unknown key 'colour' in stage 'parse'; allowed: uses, needs, retry, "
        "concurrency, timeout, review, with, description",
        f"{path}:8: stage 'enrich' needs unknown stage 'ghost'",
        f"{path}:9: `timeout` of stage 'enrich': not a duration: '5 minutes' "
        "(use e.g. 500ms, 2s, 1.5m, 1h, 1d)",
        f"{path}:10: duplicate stage 'parse' (first defined on line 3)",
        f"{path}:14: `concurrency` of stage 'publish': must be an integer >= 1, got -1",
    ]
    assert str(error) == f"{path}: 7 problems — fix the file and run `treadle validate {path}`"


def test_a_cycle_names_every_stage_in_it(tmp_path):
    stages_module(tmp_path)
    path = write(
        tmp_path,
        """\
        pipeline: p
        stages:
          start: {uses: mystages:parse}
          a:
            uses: mystages:parse
            needs: [start, c]
          b: {uses: mystages:parse, needs: a}
          c: {uses: mystages:parse, needs: [b]}
        """,
    )
    with pytest.raises(CycleError) as info:
        load_pipeline(path)
    assert info.value.stages == ["a", "b", "c"]
    assert info.value.message == f"{path}:6: dependency cycle between stages a -> b -> c -> a"
    assert info.value.problems == [info.value.message]
    assert info.value.path == str(path)


def test_a_stage_that_needs_itself_is_a_cycle(tmp_path):
    stages_module(tmp_path)
    path = write(tmp_path, "pipeline: p\nstages:\n  a: {uses: mystages:parse, needs: a}\n")
    with pytest.raises(CycleError, match="cycle between stages a -> a"):
        load_pipeline(path)


def test_two_cycles_are_two_problems(tmp_path):
    stages_module(tmp_path)
    path = write(
        tmp_path,
        """\
        pipeline: p
        stages:
          a: {uses: mystages:parse, needs: b}
          b: {uses: mystages:parse, needs: a}
          c: {uses: mystages:parse, needs: d}
          d: {uses: mystages:parse, needs: c}
        """,
    )
    assert problems_of(path) == [
        f"{path}:3: dependency cycle between stages a -> b -> a",
        f"{path}:5: dependency cycle between stages c -> d -> c",
    ]


def test_a_missing_file_is_one_clear_error(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(PipelineError) as info:
        load_pipeline(missing)
    assert info.value.message == f"pipeline file not found: {missing}"
    assert info.value.path == str(missing)
    assert info.value.hint


def test_a_relative_path_is_reported_as_given(tmp_path, monkeypatch):
    stages_module(tmp_path / "pipelines")
    write(tmp_path / "pipelines", "pipeline: p\nstages:\n  a: {uses: mystages:nope2}\n", "x.yaml")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PipelineError) as info:
        load_pipeline("pipelines/x.yaml")
    assert info.value.problems[0].startswith("pipelines/x.yaml:3: stage 'a': cannot import")


# ---------------------------------------------------------------- the approval stage


def test_approval_asks_for_a_review_with_a_summary_of_upstream_outputs():
    outputs = {"enrich": {"lang": "de"}, "parse": "x" * 500}
    outcome = Approval().execute(Item("doc-1"), ctx("review", outputs))
    assert outcome.kind is OutcomeKind.NEEDS_REVIEW
    assert outcome.prompt == "Approve review for doc-1?"
    assert outcome.data["enrich"] == {"lang": "de"}
    assert len(outcome.data["parse"]) == 200 and outcome.data["parse"].endswith("…")
    assert approval is Approval  # a class, so `with:` can pass a prompt


def test_approval_from_yaml_uses_the_prompt_in_with(tmp_path):
    path = write(
        tmp_path,
        """\
        pipeline: p
        stages:
          gate:
            uses: treadle_cli.stages:approval
            with: {prompt: "Publish {item_id} after {stage}?"}
        """,
    )
    impl = load_pipeline(path).stages["gate"].impl
    outcome = impl.execute(Item("doc-7"), StageContext("doc-7", "gate", 1, {}, {}))
    assert outcome == StageOutcome.needs_review("Publish doc-7 after gate?", {})
    assert impl.name == "gate"


# ---------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("500ms", 0.5),
        ("2s", 2.0),
        ("1.5m", 90.0),
        ("1h", 3600.0),
        ("1d", 86400.0),
        (30, 30.0),
        (0.25, 0.25),
        ("45", 45.0),
        (" 3 s ", 3.0),
        ("0s", 0.0),
        ("-0s", 0.0),
    ],
)
def test_parse_duration(value, seconds):
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(
    "value",
    [
        "",
        "soon",
        "2 minutes",
        "1w",
        "1.2.3s",
        "-1s",
        -5,
        True,
        None,
        [1],
        float("inf"),
        float("nan"),
    ],
)
def test_parse_duration_rejects(value):
    with pytest.raises(ValueError):
        parse_duration(value)


# ---------------------------------------------------------------- the builder


def fn(item, ctx):
    return None


def spec(name: str, *needs: str, line: int | None = None) -> StageSpec:
    return StageSpec(name, fn, needs=needs, line=line)


def test_build_pipeline_orders_stages_and_hashes_names_and_needs():
    pipeline = build_pipeline("demo", [spec("b", "a"), spec("a"), spec("c")])
    assert pipeline.order == ["a", "b", "c"]
    assert pipeline.path is None
    same = build_pipeline("demo", [spec("b", "a"), spec("a"), spec("c")])
    other = build_pipeline("demo", [spec("b"), spec("a"), spec("c")])
    assert pipeline.hash == same.hash != other.hash
    assert len(pipeline.hash) == 64
    assert build_pipeline("x", [spec("a")], hash="given").hash == "given"


def test_build_pipeline_accepts_a_single_need_as_a_string():
    pipeline = build_pipeline("demo", [spec("a"), StageSpec("b", fn, needs="a")])  # type: ignore[arg-type]
    assert pipeline.stages["b"].needs == ("a",)


def test_build_pipeline_raises_cycle_error_for_a_cycle():
    with pytest.raises(CycleError) as info:
        build_pipeline("demo", [spec("a", "c"), spec("b", "a"), spec("c", "b")])
    assert info.value.stages == ["a", "b", "c"]
    assert "cycle" in str(info.value)
    assert info.value.message == "dependency cycle between stages a -> b -> c -> a"


def test_build_pipeline_names_both_stages_of_an_unknown_need():
    with pytest.raises(PipelineError) as info:
        build_pipeline("demo", [spec("a"), spec("b", "missing")])
    assert info.value.message == "stage 'b' needs unknown stage 'missing'"


def test_build_pipeline_reports_every_problem_together():
    specs = [spec("a"), spec("a"), spec("x/y"), spec("b", "a", "b"), StageSpec("c", Stage)]
    with pytest.raises(PipelineError) as info:
        build_pipeline("bad/name", specs)
    assert type(info.value) is PipelineError
    assert info.value.message == "pipeline 'bad/name': 5 problems"
    assert info.value.problems == [
        "bad pipeline name 'bad/name': use letters, digits, - and _",
        "duplicate stage 'a'",
        "bad stage name 'x/y': use letters, digits, - and _",
        "stage 'c': impl must be a Stage instance or a function",
        "dependency cycle between stages b -> b",
    ]


def test_build_pipeline_names_a_stage_without_impl():
    with pytest.raises(PipelineError) as info:
        build_pipeline("demo", [spec("a"), StageSpec("ghost", None, needs=("a",))])
    assert info.value.problems == ["stage 'ghost' has no impl (a Stage instance or a function)"]


def test_build_pipeline_locates_problems_when_given_a_path():
    with pytest.raises(PipelineError) as info:
        build_pipeline("demo", [spec("a", line=3), spec("a", line=7)], path="p.yaml")
    assert info.value.problems == ["p.yaml:7: duplicate stage 'a'"]


# ---------------------------------------------------------------- fast start


def test_importing_the_module_loads_neither_networkx_nor_yaml():
    code = (
        "import sys, treadle_cli.pipeline, treadle_cli.stages; "
        "print(sorted(m for m in ('networkx', 'yaml') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
