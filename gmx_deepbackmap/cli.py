"""`gmx-dbm`: the command line. Thin: each command parses options and calls one library function."""

from __future__ import annotations

import sys

import click

from . import __version__
from .errors import GromacsError, InputError


class _Group(click.Group):
    """Report user errors on one line with a non-zero exit instead of a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (InputError, GromacsError) as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gmx-dbm")
def main():
    """gmx-deepbackmap: coarse-grained GROMACS structures back to equilibrated atomistic ones."""


overwrite_option = click.option(
    "--overwrite", is_flag=True, help="Replace existing outputs instead of backing them up (#file.1#)."
)
