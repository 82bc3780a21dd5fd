"""The typer app: options shared by every command, the per-invocation :class:`State`, and the
one place where errors become messages and exit codes (:func:`command`, :func:`main`).

Heavy modules (networkx, yaml, rich, psycopg, stage code) are imported inside the functions
that need them, so ``treadle approve`` and ``treadle status ITEM`` start fast.
"""

from __future__ import annotations

import enum
import functools
import json
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from .. import __version__
from ..errors import DatabaseLockedError, TreadleError, UsageError
from . import output

if TYPE_CHECKING:
    from rich.console import Console

    from ..store.protocol import StateStore

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CONFLICT, EXIT_DB, EXIT_HUMAN = 0, 1, 2, 3, 4, 5
EXIT_BUG = 70  # an unexpected exception: a bug in treadle or in the stage code's imports
EXIT_PIPE = 141  # 128 + SIGPIPE: the reader of stdout went away (`treadle status | head`)
DEFAULT_BUSY_TIMEOUT = 30.0

app = typer.Typer(
    name="treadle",
    help="Persistent, resumable, human-in-the-loop pipelines for work items.\n\n"
    'Example: treadle advance pipelines/document_review.yaml doc-1 --data \'{"path": "a.md"}\'',
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


class Durability(enum.StrEnum):
    normal = "normal"
    full = "full"


@dataclass
class State:
    """Options shared by every command, built once per invocation."""

    db: str
    debug: bool
    durability: Durability
    timeout: float

    def open(self, *, readonly: bool = False, must_exist: bool = False) -> StateStore:
        """Open the database --db names; ``must_exist`` refuses to create one."""
        from ..store import database_exists, display_target, open_store

        if must_exist and not database_exists(self.db):
            raise UsageError(
                f"no treadle database at {display_target(self.db)}",
                hint="pass --db PATH (or set TREADLE_DB), or run `treadle advance` first",
            )
        return open_store(
            self.db, durability=self.durability.value, timeout=self.timeout, readonly=readonly
        )


def state(ctx: typer.Context) -> State:
    """The invocation's :class:`State`, built by the app callback."""
    return ctx.obj


# Options several commands share, declared once.
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON on stdout (see README).")]
WaitOpt = Annotated[
    float,
    typer.Option(
        "--wait",
        min=0,
        help="Seconds to wait for retries due soon; later ones are left for the next call.",
    ),
]
ItemArg = Annotated[str, typer.Argument(metavar="ITEM", help="The item id.")]
AdvanceOpt = Annotated[
    bool,
    typer.Option(
        "--advance", help="Then advance the item with the pipeline file it was registered with."
    ),
]
ByOpt = Annotated[str | None, typer.Option("--by", help="Who decides (default: the OS user).")]


def exit_for(states: list[str]) -> int:
    """Exit 1 if an item failed or was rejected, 0 otherwise (waiting on review is fine)."""
    return EXIT_FAILED if any(s in ("failed", "rejected") for s in states) else EXIT_OK


# ---------------------------------------------------------------------- input


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json(text: str, what: str) -> Any:
    """The JSON an option holds; anything else is a usage error naming the option."""
    try:
        return json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"{what} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
            hint="quote it, e.g. --data '{\"key\": 1}'",
        ) from None
    except ValueError as exc:  # NaN, Infinity: Python reads them, JSON has no such values
        raise UsageError(f"{what} is not valid JSON: {exc}", hint="use null or a number") from None
    except RecursionError:
        raise UsageError(f"{what} is nested too deeply", hint="flatten the JSON") from None


def json_object(text: str, what: str) -> dict[str, Any]:
    """Like :func:`parse_json`, and the value must be an object."""
    value = parse_json(text, what)
    if not isinstance(value, dict):
        raise UsageError(
            f"{what} must be a JSON object, not {type(value).__name__}",
            hint='wrap it: {"key": value}',
        )
    return value


# ---------------------------------------------------------------------- consoles


def console(stderr: bool = False) -> Console:
    """A rich console for this invocation (rich is imported only here, for terminals)."""
    from rich.console import Console

    from .render import theme

    return Console(theme=theme(), highlight=False, stderr=stderr)


def out_is_terminal() -> bool:
    """What rich would decide, without importing rich for piped output."""
    tty_compatible = os.environ.get("TTY_COMPATIBLE", "")
    if tty_compatible == "0":
        return False
    if os.environ.get("FORCE_COLOR") or tty_compatible == "1":
        return True
    return sys.stdout.isatty()


# ---------------------------------------------------------------------- errors

#: The library's hints name no flags; on the command line they say which option to change.
#: (error class, a phrase of the library's hint) -> the hint the CLI prints instead.
CLI_HINTS: dict[tuple[type[TreadleError], str], str] = {
    (DatabaseLockedError, "busy timeout"): (
        "another process holds it; retry, or raise TREADLE_BUSY_TIMEOUT (seconds)"
    ),
    (UsageError, "give the reason"): "pass --reason TEXT",
    (UsageError, "advance the item with a pipeline file"): (
        "restore it, or run `treadle advance PIPELINE ITEM`"
    ),
}


def with_cli_hint(exc: TreadleError) -> TreadleError:
    """``exc`` with its hint rewritten for the command line, if :data:`CLI_HINTS` has one."""
    for (kind, phrase), hint in CLI_HINTS.items():
        if isinstance(exc, kind) and phrase in (exc.hint or ""):
            exc.hint = hint
            break
    return exc


def _emit_error(exc: TreadleError, json_mode: bool) -> None:
    if json_mode:
        output.print_error(exc)
        return
    sys.stderr.write(f"error: {exc}\n")
    problems = getattr(exc, "problems", None)
    if problems and problems != [exc.message]:
        for p in problems:
            sys.stderr.write(f"  {p}\n")


F = TypeVar("F", bound=Callable[..., Any])


def command(fn: F) -> F:
    """The one place where errors become messages and exit codes."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = kwargs.get("ctx")
        st: State | None = getattr(ctx, "obj", None)
        debug = bool(st and st.debug)
        json_mode = bool(kwargs.get("json_output"))
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except TreadleError as exc:
            if debug:
                traceback.print_exc()
            _emit_error(with_cli_hint(exc), json_mode)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            sys.stderr.write("interrupted\n")
            raise typer.Exit(130) from None
        except BrokenPipeError:
            # Not a bug: whoever read stdout has had enough. Exit quietly, as a process
            # killed by SIGPIPE would, and keep the interpreter's final flush from failing.
            _silence_stdout()
            raise typer.Exit(EXIT_PIPE) from None
        except Exception as exc:
            if debug:
                traceback.print_exc()
            bug = TreadleError(
                f"unexpected {type(exc).__name__}: {exc}",
                hint="this is a bug; rerun with --debug and report the traceback",
            )
            bug.exit_code = EXIT_BUG
            _emit_error(bug, json_mode)
            raise typer.Exit(EXIT_BUG) from None

    return wrapper  # type: ignore[return-value]


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no real file descriptor (e.g. under CliRunner)
        pass


# ---------------------------------------------------------------------- the app


def _version(value: bool) -> None:
    if value:
        typer.echo(f"treadle {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    ctx: typer.Context,
    db: Annotated[
        str,
        typer.Option(
            "--db",
            envvar="TREADLE_DB",
            help="A SQLite file, or a PostgreSQL URL postgresql://USER@HOST/DB.",
        ),
    ] = "treadle.db",
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    durability: Annotated[
        Durability,
        typer.Option(
            "--durability",
            envvar="TREADLE_DURABILITY",
            help="normal survives a process crash; full also survives power loss (slower).",
        ),
    ] = Durability.normal,
    version: Annotated[
        bool | None,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = None,
) -> None:
    """Persistent, resumable, human-in-the-loop pipelines for work items."""
    try:
        timeout = float(os.environ.get("TREADLE_BUSY_TIMEOUT", DEFAULT_BUSY_TIMEOUT))
    except ValueError:
        timeout = DEFAULT_BUSY_TIMEOUT
    ctx.obj = State(db=db, debug=debug, durability=durability, timeout=timeout)


def main() -> None:
    """The console script: usage errors become one line, like every other error."""
    try:
        code = app(prog_name="treadle", standalone_mode=False)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:
        if type(exc).__name__ == "Abort":  # Ctrl-C at a prompt
            sys.exit(130)
        show = getattr(exc, "format_message", None)
        exit_code = getattr(exc, "exit_code", None)
        if show is None or not isinstance(exit_code, int):
            raise
        where = getattr(getattr(exc, "ctx", None), "command_path", None) or "treadle"
        if message := show().strip():  # empty when bare `treadle` printed its help
            sys.stderr.write(f"error: {message} — see `{where} --help`\n")
        sys.exit(exit_code)
    sys.exit(code if isinstance(code, int) else 0)
