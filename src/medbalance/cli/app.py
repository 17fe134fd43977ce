"""The typer application object. Command modules import ``app`` from here and register on it.

User errors (:class:`~medbalance.errors.MedbalanceError`) are printed as one line
``error: <file>: <problem>`` on stderr and exit with code 2, never as a traceback.
"""

from __future__ import annotations

import sys

import typer
from typer.core import TyperGroup

from medbalance.errors import MedbalanceError


class _ErrorHandlingGroup(TyperGroup):
    def invoke(self, ctx: typer.Context):
        try:
            return super().invoke(ctx)
        except MedbalanceError as e:
            typer.echo(f"error: {e}", err=True)
            sys.stderr.flush()
            ctx.exit(2)


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
