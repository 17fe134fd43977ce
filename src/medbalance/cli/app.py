"""The typer application object. Command modules import ``app`` from here and register on it.

User errors (:class:`~medbalance.errors.MedbalanceError`) are printed as one line
``error: <file>: <problem>`` on stderr and exit with code 2, never as a traceback; so are OS errors
(read-only output, full disk, missing permission): ``error: <path>: cannot write or read: <cause>``.
"""

from __future__ import annotations

import errno
import sys

import typer
from typer.core import TyperGroup

from medbalance.errors import MedbalanceError


class _ErrorHandlingGroup(TyperGroup):
    def invoke(self, ctx: typer.Context):
        try:
            return super().invoke(ctx)
        except (MedbalanceError, OSError) as e:  # OSError: read-only location, full disk, missing permission, ...
            typer.echo(f"error: {e if isinstance(e, MedbalanceError) else os_error_line(e)}", err=True)
            sys.stderr.flush()
            ctx.exit(2)


def os_error_line(e: OSError) -> str:
    """``<path>: <cause>`` for an OS error (the path the system call failed on, the cause in words)."""
    cause = e.strerror or type(e).__name__
    if e.errno is not None:
        cause = f"{cause} ({errno.errorcode.get(e.errno, e.errno)})"
    paths = [str(p) for p in (e.filename, e.filename2) if p is not None]
    where = " -> ".join(paths) if paths else "(no path given by the system)"
    return f"{where}: cannot write or read: {cause}".replace("\n", " ")


app = typer.Typer(
    cls=_ErrorHandlingGroup,
    name="medbalance",
    help="Rebalance imbalanced medical imaging datasets with conditional generative models, and prove it helped.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

datasets_app = typer.Typer(cls=_ErrorHandlingGroup, help="Make built-in datasets.", no_args_is_help=True)
app.add_typer(datasets_app, name="datasets")
