"""Pipeline files: YAML -> validated `Pipeline` -> networkx DiGraph.

Validation reports every problem at once, each located as ``file:line: message``, in a
single `PipelineError`. PyYAML and networkx are imported inside the functions that use
them, so commands that never load a pipeline (``treadle approve``) start fast.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import inspect
import json
import math
import os
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from difflib import get_close_matches
from typing import TYPE_CHECKING, Any, NoReturn

from .errors import CycleError, PipelineError, StageImportError
from .model import RetryPolicy, Stage

if TYPE_CHECKING:
    import networkx

NAME_RE = re.compile(r"[A-Za-z0-9_-]+")
TOP_KEYS = ("pipeline", "description", "durability", "stages")
STAGE_KEYS = ("uses", "needs", "retry", "concurrency", "timeout", "review", "with", "description")
RETRY_KEYS = ("max_attempts", "backoff", "max_backoff")
_DURATION_RE = re.compile(r"\s*([+-]?)(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d)?\s*")
_SECONDS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_NULL_TAG = "tag:yaml.org,2002:null"


@dataclass(frozen=True)
class StageSpec:
    """One stage of a pipeline, its implementation already resolved."""

    name: str
    impl: Any  # a Stage instance or a plain callable (item, ctx)
    needs: tuple[str, ...] = ()
    retry: RetryPolicy = RetryPolicy()
    timeout: float | None = None  # seconds, per attempt
    concurrency: int = 4  # fan-out subtasks run at most this many at a time
    review: bool = False  # `review: always`
    uses: str | None = None  # the import path as written in the YAML
    line: int | None = None  # line of the stage in the YAML file


@dataclass
class Pipeline:
    """A validated pipeline: stages in topological order, ties broken by declaration order."""

    name: str
    stages: dict[str, StageSpec]
    description: str = ""
    path: str | None = None  # absolute path of the YAML file; None when built in code
    hash: str | None = None  # sha256 of the file bytes, or of the stage names and needs
    durability: str | None = None  # "full" asks the CLI to sync every commit

    @property
    def order(self) -> list[str]:
        """Stage names in run order."""
        return list(self.stages)

    def graph(self) -> networkx.DiGraph[str]:
        """The DAG: one node per stage (attribute ``spec``), an edge from each need to its stage."""
        import networkx as nx

        g: networkx.DiGraph[str] = nx.DiGraph(name=self.name)
        for name, spec in self.stages.items():
            g.add_node(name, spec=spec)
        for name, spec in self.stages.items():
            g.add_edges_from((need, name) for need in spec.needs)
        return g


def parse_duration(value: str | int | float) -> float:
    """Seconds from ``"500ms"``, ``"2s"``, ``"1.5m"``, ``"1h"``, ``"1d"`` or a number of seconds.

    Raises ValueError for anything else, including negative durations.
    """
    if isinstance(value, bool):  # bool is an int subclass; `timeout: yes` is a mistake
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION_RE.fullmatch(value)):
        unit = m[3] or "s"
        seconds = float(m[2]) / 1000 if unit == "ms" else float(m[2]) * _SECONDS[unit]
        seconds = -seconds if m[1] == "-" else seconds
    else:
        raise ValueError(f"not a duration: {value!r} (use e.g. 500ms, 2s, 1.5m, 1h, 1d)")
    if not math.isfinite(seconds):
        raise ValueError(f"not a duration: {value!r}")
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative: {value!r}")
    return seconds or 0.0  # turns -0.0 into 0.0


# ------------------------------------------------------------------ validation


def _one_line(text: str, limit: int = 400) -> str:
    """A problem is one bounded line, whatever the file put into it (line breaks, bombs)."""
    text = text.replace("\r", "\\r").replace("\n", "\\n")
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass
class _Problem:
    text: str
    line: int = 0
    cycle: list[str] | None = None
    where: str = ""
    is_import: bool = False


Locate = Callable[[str | None, str | None], tuple[str, int]]


def _validate(
    name: str | None, specs: list[StageSpec], locate: Locate, *, check_impl: bool
) -> tuple[list[_Problem], list[str]]:
    """Problems with names, duplicates, needs and cycles; else the run order."""
    import networkx as nx

    problems: list[_Problem] = []

    def add(where: tuple[str, int], message: str) -> None:
        problems.append(_Problem(where[0] + message, where[1]))

    if name is not None and not NAME_RE.fullmatch(name):
        add(locate(None, None), f"bad pipeline name {name!r}: use letters, digits, - and _")
    first: dict[str, StageSpec] = {}
    for spec in specs:
        where = locate(spec.name, None)
        if not isinstance(spec.name, str) or not NAME_RE.fullmatch(spec.name):
            add(where, f"bad stage name {spec.name!r}: use letters, digits, - and _")
        if spec.name in first:
            add(where, f"duplicate stage {spec.name!r}")
            continue
        first[spec.name] = spec
        # The YAML reader checks `uses` itself, with the failing import's message.
        if check_impl and spec.impl is None:
            add(where, f"stage {spec.name!r} has no impl (a Stage instance or a function)")
        elif check_impl and not _is_impl(spec.impl):
            add(where, f"stage {spec.name!r}: impl must be a Stage instance or a function")

    g: nx.DiGraph[str] = nx.DiGraph()
    g.add_nodes_from(first)
    for spec in first.values():
        for need in spec.needs:
            if need in first:
                g.add_edge(need, spec.name)
                continue
            close = get_close_matches(need, list(first), n=1)
            guess = f" (did you mean {close[0]!r}?)" if close else ""
            add(locate(spec.name, need), f"stage {spec.name!r} needs unknown stage {need!r}{guess}")

    index = {stage: i for i, stage in enumerate(first)}
    loops = [
        c
        for c in nx.strongly_connected_components(g)
        if len(c) > 1 or any(g.has_edge(s, s) for s in c)  # a stage that needs itself
    ]
    for component in sorted(loops, key=lambda c: min(index[s] for s in c)):
        cycle = [u for u, _ in nx.find_cycle(g.subgraph(component))]
        start = cycle.index(min(cycle, key=index.__getitem__))
        cycle = cycle[start:] + cycle[:start]
        # Point at the `needs` entry that closes the loop on the first-declared stage.
        place, line = locate(cycle[0], cycle[-1])
        message = CycleError(cycle, where=place).message
        problems.append(_Problem(message, line, cycle=cycle, where=place))
    if problems:
        return problems, []
    return [], list(nx.lexicographical_topological_sort(g, key=index.__getitem__))


def _is_impl(obj: Any) -> bool:
    return isinstance(obj, Stage) or (callable(obj) and not isinstance(obj, type))


def _fail(problems: list[_Problem], *, path: str | None, label: str, hint: str | None) -> NoReturn:
    """Raise the one error that carries every problem."""
    if len(problems) == 1 and problems[0].cycle is not None:
        raise CycleError(problems[0].cycle, path=path, where=problems[0].where)
    texts = [p.text for p in problems]
    summary = texts[0] if len(texts) == 1 else f"{label}: {len(texts)} problems"
    cls = StageImportError if all(p.is_import for p in problems) else PipelineError
    raise cls(summary, path=path, problems=texts, hint=hint)


def build_pipeline(
    name: str,
    specs: list[StageSpec],
    *,
    description: str = "",
    path: str | None = None,
    hash: str | None = None,
) -> Pipeline:
    """Validate stages built in code and order them.

    Raises CycleError when the only problem is a cycle, else one PipelineError whose
    ``problems`` lists bad names, duplicates, unknown needs and cycles together.
    """
    # A lone string would otherwise become a tuple of its characters.
    specs = [replace(s, needs=(s.needs,)) if isinstance(s.needs, str) else s for s in specs]
    lines = {spec.name: spec.line for spec in specs}

    def locate(stage: str | None, need: str | None) -> tuple[str, int]:
        line = lines.get(stage) if stage else None
        return (f"{path}:{line}: " if path and line else ""), line or 0

    problems, order = _validate(name, specs, locate, check_impl=True)
    if problems:
        _fail(problems, path=path, label=path or f"pipeline {name!r}", hint=None)
    by_name = {spec.name: spec for spec in specs}
    stages = {stage: by_name[stage] for stage in order}
    if hash is None:
        canonical = json.dumps([[s, list(stages[s].needs)] for s in order])
        hash = hashlib.sha256(canonical.encode()).hexdigest()
    return Pipeline(name, stages, description=description, path=path, hash=hash)


# ------------------------------------------------------------------- imports


def resolve_import(spec: str, base_dir: str | None) -> Any:
    """Import ``"module:attribute"`` or ``"module.attribute"``, looking in base_dir first.

    Raises StageImportError whose message carries the underlying exception's type and
    text; an exception raised by the module while importing is reported the same way.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep:
        module_name, _, attr = spec.rpartition(".")
    parts = [*module_name.split("."), *attr.split(".")]
    if not module_name or not attr or not all(p.isidentifier() for p in parts):
        raise StageImportError(
            f"bad import path {spec!r}: use 'module:attribute' or 'module.attribute'"
        )
    try:
        obj = _import(module_name, base_dir)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (Exception, SystemExit) as exc:  # user code: a sys.exit() must not end validation
        raise StageImportError(f"cannot import {spec!r}: {type(exc).__name__}: {exc}") from exc
    return obj


def _import(module_name: str, base_dir: str | None) -> Any:
    if base_dir is None:
        return importlib.import_module(module_name)
    base = os.path.abspath(base_dir)
    _forget_shadowed(module_name.partition(".")[0], base)
    sys.path.insert(0, base)
    importlib.invalidate_caches()  # the folder may have gained files since it was last listed
    try:
        return importlib.import_module(module_name)
    finally:
        if base in sys.path:
            sys.path.remove(base)


def _forget_shadowed(top: str, base: str) -> None:
    """Drop a cached module of the same name loaded from elsewhere, so base wins.

    Two pipeline folders may each hold a ``stages.py``; without this the second
    folder would silently get the first folder's module.
    """
    loaded = sys.modules.get(top)
    local = os.path.realpath(os.path.join(base, top))
    is_local = os.path.isfile(local + ".py") or os.path.isfile(os.path.join(local, "__init__.py"))
    if loaded is None or not is_local or top in sys.stdlib_module_names:
        return
    if top == __name__.partition(".")[0]:  # never load a second copy of treadle itself
        return
    origin = getattr(loaded, "__file__", None) or ""
    origin = os.path.realpath(origin) if origin else ""
    if origin == local + ".py" or origin.startswith(local + os.sep):
        return
    for name in [n for n in sys.modules if n == top or n.startswith(top + ".")]:
        del sys.modules[name]


# ----------------------------------------------------------------- YAML files


def _convert(key: str, value: Any) -> Any:
    """The YAML value of `key`, converted; ValueError says what is wrong with it."""
    if key in ("uses", "description") and not isinstance(value, str):
        raise ValueError(f"must be a string, got {value!r}")
    if key in ("concurrency", "max_attempts") and (
        isinstance(value, bool) or not isinstance(value, int) or value < 1
    ):
        raise ValueError(f"must be an integer >= 1, got {value!r}")
    if key in ("timeout", "backoff", "max_backoff"):
        value = parse_duration(value)
        if key == "timeout" and value == 0:
            raise ValueError("must be more than 0")
    if key == "durability" and value not in ("normal", "full"):
        raise ValueError(f"must be `normal` or `full`, got {value!r}")
    if key == "review":
        if value not in ("always", "never"):
            raise ValueError(f"must be `always` or `never`, got {value!r}")
        value = value == "always"
    if key == "with" and not (isinstance(value, dict) and all(isinstance(k, str) for k in value)):
        raise ValueError("must be a mapping of keyword arguments")
    return value


_DUP = "duplicate key {key!r} {what} (first on line {first})"


class _Reader:
    """Walks the YAML node tree, which keeps line numbers and duplicate keys."""

    def __init__(self, label: str, base_dir: str) -> None:
        import yaml

        self.yaml, self.label, self.base_dir = yaml, label, base_dir
        self.problems: list[_Problem] = []
        self.need_lines: dict[tuple[str, str], int] = {}
        self.name_line = 1
        self.durability: str | None = None
        self.constructor = yaml.SafeLoader("")

    def add(self, at: Any, message: str, *, is_import: bool = False) -> None:
        line = at if isinstance(at, int) else at.start_mark.line + 1
        text = _one_line(f"{self.label}:{line}: {message}")
        self.problems.append(_Problem(text, line, is_import=is_import))

    def mapping(self, node: Any, what: str, allowed: Iterable[str] = (), dup: str = _DUP) -> dict:
        """Key -> (key node, value node); reports bad, duplicate and unknown keys."""
        allowed = tuple(allowed)
        out: dict[str, tuple[Any, Any]] = {}
        for k, v in node.value:
            if not isinstance(k, self.yaml.ScalarNode):
                self.add(k, f"keys {what} must be plain names")
            elif k.value in out:
                first = out[k.value][0].start_mark.line + 1
                self.add(k, dup.format(key=k.value, what=what, first=first))
            elif allowed and k.value not in allowed:
                self.add(k, f"unknown key {k.value!r} {what}; allowed: {', '.join(allowed)}")
            else:
                out[k.value] = (k, v)
        return out

    def checked(self, fields: dict, keys: Iterable[str], what: str) -> dict[str, Any]:
        """The valid values of these keys; every invalid one becomes a problem."""
        out = {}
        for key, (_, node) in fields.items():
            if key not in keys:
                continue
            try:
                value = self.constructor.construct_object(node, deep=True)
            except Exception as exc:  # e.g. an unknown !tag
                self.add(node, f"cannot read `{key}` {what}: {str(exc).splitlines()[0]}")
                continue
            try:
                out[key] = _convert(key, value)
            except ValueError as exc:
                self.add(node, f"`{key}` {what}: {exc}")
        return out

    def read(self, data: bytes) -> tuple[str | None, str, list[StageSpec]]:
        """The pipeline name, description and stage specs; problems go to self.problems."""
        yaml = self.yaml
        try:
            root = yaml.compose(data, Loader=yaml.SafeLoader)
        except RecursionError:
            self.add(1, "invalid YAML: nested too deeply")
            return None, "", []
        except yaml.YAMLError as exc:
            mark, cmark = getattr(exc, "problem_mark", None), getattr(exc, "context_mark", None)
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            if (context := getattr(exc, "context", None)) and cmark:
                started = f"{problem} ({context} started on line {cmark.line + 1})"
                # "expected a single document, but found another" reads better unsplit.
                problem = f"{context}, {problem}" if problem.startswith("but ") else started
            self.add(mark.line + 1 if mark else 1, f"invalid YAML: {problem}")
            return None, "", []
        if not isinstance(root, yaml.MappingNode):
            what = "the file is empty" if root is None else "the top level is not a mapping"
            self.add(root or 1, f"{what}; expected a mapping with `pipeline` and `stages`")
            return None, "", []

        top = self.mapping(root, "at the top level", TOP_KEYS)
        checked = self.checked(top, ["description", "durability"], "at the top level")
        description = checked.get("description", "")
        self.durability = checked.get("durability")
        name = None
        if "pipeline" not in top:
            self.add(root, "missing `pipeline` (the pipeline's name)")
        elif not isinstance(node := top["pipeline"][1], yaml.ScalarNode):
            self.add(node, "`pipeline` must be a name (letters, digits, - and _)")
        else:
            name, self.name_line = node.value, node.start_mark.line + 1
        node = top.get("stages", (None, None))[1]
        if not isinstance(node, yaml.MappingNode) or not node.value:
            self.add(node or root, "`stages` must be a non-empty mapping of stage name -> stage")
            return name, description, []
        dup = "duplicate stage {key!r} (first defined on line {first})"
        stages = self.mapping(node, "in `stages`", dup=dup)
        return name, description, [self.stage(k, key, v) for key, (k, v) in stages.items()]

    def stage(self, key: Any, name: str, node: Any) -> StageSpec:
        line = key.start_mark.line + 1
        if not isinstance(node, self.yaml.MappingNode):
            self.add(key, f"stage {name!r} must be a mapping with at least `uses`")
            return StageSpec(name, None, line=line)
        what = f"of stage {name!r}"
        fields = self.mapping(node, f"in stage {name!r}", STAGE_KEYS)
        if isinstance(with_node := fields.get("with", (None, None))[1], self.yaml.MappingNode):
            self.mapping(with_node, f"in `with` {what}")  # only to report duplicate keys
        got = self.checked(fields, [k for k in STAGE_KEYS if k not in ("needs", "retry")], what)
        opts: dict[str, Any] = {k: got[k] for k in ("concurrency", "timeout", "review") if k in got}
        opts["needs"] = self.needs(name, fields.get("needs", (None, None))[1])
        if "retry" in fields:
            opts["retry"] = self.retry(name, fields["retry"][1])
        if "uses" not in fields:
            self.add(key, f"stage {name!r} is missing `uses` (e.g. uses: mystages:{name})")
        uses = got.get("uses")
        impl = self.impl(name, uses, fields, got.get("with")) if uses is not None else None
        return StageSpec(name, impl, uses=uses, line=line, **opts)

    def needs(self, stage: str, node: Any) -> tuple[str, ...]:
        yaml = self.yaml
        if node is None or (isinstance(node, yaml.ScalarNode) and node.tag == _NULL_TAG):
            return ()
        if isinstance(node, yaml.MappingNode):
            self.add(node, f"`needs` of stage {stage!r} must be a stage name or a list of names")
            return ()
        out: list[str] = []
        for entry in [node] if isinstance(node, yaml.ScalarNode) else node.value:
            if not isinstance(entry, yaml.ScalarNode) or not entry.value:
                self.add(entry, f"`needs` of stage {stage!r} must list stage names")
            elif entry.value not in out:
                out.append(entry.value)
                self.need_lines[(stage, entry.value)] = entry.start_mark.line + 1
        return tuple(out)

    def retry(self, stage: str, node: Any) -> RetryPolicy:
        what = f"in `retry` of stage {stage!r}"
        if not isinstance(node, self.yaml.MappingNode):
            self.add(
                node, f"`retry` of stage {stage!r} must be a mapping of {', '.join(RETRY_KEYS)}"
            )
            return RetryPolicy()
        return RetryPolicy(**self.checked(self.mapping(node, what, RETRY_KEYS), RETRY_KEYS, what))

    def impl(self, stage: str, uses: str, fields: dict, kwargs: dict[str, Any] | None) -> Any:
        """Import `uses` and make it a Stage instance or a callable (item, ctx)."""
        node, with_node = fields["uses"][1], fields.get("with", (None, None))[1]
        try:
            obj = resolve_import(uses, self.base_dir)
        except StageImportError as exc:
            self.add(node, f"stage {stage!r}: {exc.message}", is_import=True)
            return None
        if isinstance(obj, type) and issubclass(obj, Stage):
            try:
                return _named(obj(**(kwargs or {})), stage)
            except Exception as exc:  # the class's own __init__ rejected the `with:` values
                problem = (
                    f"cannot create {obj.__name__}({_args(kwargs)}): {type(exc).__name__}: {exc}"
                )
                self.add(node, f"stage {stage!r}: {problem}")
                return None
        if isinstance(obj, Stage):
            if kwargs is not None:
                self.add(
                    with_node,
                    f"stage {stage!r}: `with` needs a Stage class or a function; "
                    f"{uses!r} is a Stage instance",
                )
            return _named(obj, stage)
        if callable(obj) and not isinstance(obj, type):
            try:
                inspect.signature(obj).bind(None, None, **(kwargs or {}))
            except TypeError as exc:
                self.add(
                    node,
                    f"stage {stage!r}: {uses!r} cannot be called as "
                    f"(item, ctx{', ' if kwargs else ''}{_args(kwargs)}): {exc}",
                )
                return None
            except ValueError:  # no signature to check (some builtins): trust it
                pass
            return functools.partial(obj, **kwargs) if kwargs else obj
        kind = "a class" if isinstance(obj, type) else f"a {type(obj).__name__}"
        self.add(
            node,
            f"stage {stage!r}: {uses!r} is {kind}, not a Stage subclass, "
            "Stage instance or function (item, ctx)",
        )
        return None


def _args(kwargs: dict[str, Any] | None) -> str:
    import reprlib

    short = reprlib.Repr()
    short.maxstring, short.maxother, short.maxlevel = 40, 40, 2
    return ", ".join(
        f"{k if k.isidentifier() else repr(k)}={short.repr(v)}" for k, v in (kwargs or {}).items()
    )


def _named(stage: Stage, name: str) -> Stage:
    # Instances may be shared between pipelines: keep a name the author already chose.
    if not stage.name:
        stage.name = name
    return stage


def load_pipeline(path: str | os.PathLike[str]) -> Pipeline:
    """Read, validate and resolve a pipeline file.

    Raises PipelineError listing every problem as ``file:line: message`` (CycleError
    when a cycle is the only one, StageImportError when all are failing imports).
    """
    label = os.fspath(path)
    full = os.path.abspath(label)
    hint = f"fix the file and run `treadle validate {label}`"
    try:
        with open(full, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise PipelineError(
            f"pipeline file not found: {label}",
            path=label,
            hint="check the path; pipeline files are YAML, e.g. pipelines/NAME.yaml",
        ) from None
    except OSError as exc:
        raise PipelineError(
            f"cannot read pipeline file {label}: {exc.strerror}", path=label, hint=hint
        ) from exc

    reader = _Reader(label, os.path.dirname(full))
    try:
        name, description, specs = reader.read(data)
    except RecursionError:  # e.g. a `with:` value nested thousands deep
        raise PipelineError(
            f"{label}: the file is nested too deeply to read", path=label, hint=hint
        ) from None
    lines = {spec.name: spec.line or 0 for spec in specs}

    def locate(stage: str | None, need: str | None) -> tuple[str, int]:
        if stage is None:
            line = reader.name_line
        else:
            line = reader.need_lines.get((stage, need or ""), 0) or lines.get(stage, 0)
        return f"{label}:{line}: ", line

    problems, _ = _validate(name, specs, locate, check_impl=False)
    problems = sorted(reader.problems + problems, key=lambda p: p.line)
    if problems:
        _fail(problems, path=label, label=label, hint=hint)
    assert name is not None  # a missing name is always reported as a problem
    sha = hashlib.sha256(data).hexdigest()
    pipeline = build_pipeline(name, specs, description=description, path=full, hash=sha)
    pipeline.durability = reader.durability
    return pipeline
