"""The ``kdmsi-geo`` click group; user errors become one line on stderr and an exit code."""

from __future__ import annotations

import sys

import click

from kdmsi_core import __version__
from kdmsi_core.errors import KdmsiError


class KdmsiGroup(click.Group):
    """A group that turns :class:`KdmsiError` into ``Error: <sentence>`` without a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except KdmsiError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("Error: interrupted; no outputs were written.", err=True)
            sys.exit(130)


@click.group(cls=KdmsiGroup)
@click.version_option(__version__, prog_name="kdmsi-geo")
def cli() -> None:
    """Change detection for georeferenced image pairs, trained from image-level labels."""


def _register() -> None:
    from kdmsi_core.cli import detect, evaluate, info, pseudo_label, synth, train

    for module in (detect, synth, train, evaluate, pseudo_label, info):
        cli.add_command(module.command)


_register()


if __name__ == "__main__":
    cli()
