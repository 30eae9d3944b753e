"""placeholder"""
import click


@click.command("detect")
def command() -> None:
    """Not yet available."""
