"""placeholder"""
import click


@click.command("synth")
def command() -> None:
    """Not yet available."""
