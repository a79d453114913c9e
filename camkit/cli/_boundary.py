"""The CLI's one error boundary: every exception a command can raise becomes one line on
stderr and an exit code (the `hf` CLI's `format_known_exception` pattern).

    2    bad input: a CamkitError from the library, or a usage error (unknown option, bad choice);
         or the environment refused a file operation (disk full, quota, read-only, permissions:
         an OSError named in files.os_error_line), said in words, not as an internal error
    130  interrupted (Ctrl-C): "interrupted", or an Interrupted error saying what was kept
    1    an internal error (a bug): one line too; CAMKIT_DEBUG=1 shows the traceback
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any

import typer
from typer.core import TyperGroup

try:  # typer >= 0.20 carries its own copy of click: its exceptions are not click's
    from typer._click.exceptions import ClickException, NoArgsIsHelpError
except ImportError:  # pragma: no cover  (older typer runs on click itself)
    from click.exceptions import ClickException, NoArgsIsHelpError

from camkit.core.files import os_error_line
from camkit.errors import CamkitError, Interrupted


def error_code(e: BaseException) -> tuple[str | None, int]:
    """(the line to print, or None; the exit code) for any exception."""
    if isinstance(e, typer.Exit):
        return None, e.exit_code
    if isinstance(e, SystemExit):
        return None, e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    if isinstance(e, (KeyboardInterrupt, typer.Abort)):
        return "interrupted", 130
    if isinstance(e, Interrupted):
        return str(e), 130
    if isinstance(e, CamkitError):
        return str(e), 2
    if isinstance(e, ClickException):  # typer's pydantic coercion prefixes "Value error, "
        return e.format_message().replace("Value error, ", ""), e.exit_code
    if (line := os_error_line(e)) is not None:
        return line, 2
    return f"internal error {type(e).__name__}: {e} (set CAMKIT_DEBUG=1 for the traceback)", 1


def one_line_warnings() -> None:
    """Library warnings as `warning: ...` lines on stderr (no file names, no source lines)."""
    def show(message, category, filename, lineno, file=None, line=None):
        print(f"warning: {message}", file=sys.stderr)

    warnings.showwarning = show
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*upsampling.*")


class Boundary(TyperGroup):
    """The root group: parse errors and command errors alike go through `error_code`."""

    def main(self, args: Any = None, prog_name: str | None = None, standalone_mode: bool = True, **extra: Any) -> Any:
        one_line_warnings()
        try:
            result = super().main(args, prog_name, standalone_mode=False, **extra)
            code = result if isinstance(result, int) else 0
        except NoArgsIsHelpError as e:
            print(e.ctx.get_help())  # a bare `camkit` (or `camkit calc`) shows its help, not an error
            code = 2
        except BaseException as e:  # noqa: BLE001  the boundary: nothing escapes as a traceback
            if isinstance(e, Exception) and not isinstance(e, (CamkitError, ClickException)) \
                    and os_error_line(e) is None and os.environ.get("CAMKIT_DEBUG"):
                raise
            message, code = error_code(e)
            if message:
                print(f"error: {message}", file=sys.stderr)
        if standalone_mode:
            sys.exit(code)
        return code

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:  # typer turns it into a silent Exit(130); say so
            print("error: interrupted", file=sys.stderr)
            raise typer.Exit(130) from None
