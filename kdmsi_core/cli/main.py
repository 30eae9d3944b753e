"""The ``kdmsi-geo`` click group; user errors become one line on stderr and an exit code."""

from __future__ import annotations

import signal
import sys

import click

from kdmsi_core import __version__
from kdmsi_core.errors import KdmsiError
from kdmsi_core.signals import ignore_after_run, stop_on_signals, stopped


class KdmsiGroup(click.Group):
    """A group that turns :class:`KdmsiError` into ``Error: <sentence>`` without a traceback,
    and SIGINT, SIGTERM and SIGHUP into such an error in every command."""

    def __call__(self, *args, **kwargs):
        """The program itself (tests call ``main``): once the command has ended, a late
        signal no longer cuts the shutdown short."""
        try:
            return self.main(*args, **kwargs)
        finally:
            ignore_after_run()

    def invoke(self, ctx: click.Context):
        try:
            with stop_on_signals():
                return super().invoke(ctx)
        except KdmsiError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:  # SIGINT before or after the handlers were in place
            click.echo(f"Error: {stopped(signal.SIGINT)}", err=True)
            sys.exit(130)


@click.group(cls=KdmsiGroup)
@click.version_option(__version__, prog_name="kdmsi-geo")
def cli() -> None:
    """Change detection for georeferenced image pairs, trained from image-level labels."""


def _register() -> None:
    from kdmsi_core.cli import detect, evaluate, export, info, pseudo_label, synth, train

    for module in (detect, synth, train, evaluate, info, pseudo_label, export):
        cli.add_command(module.command)


_register()


if __name__ == "__main__":
    cli()
