"""placeholder"""
import click


@click.command("evaluate")
def command() -> None:
    """Not yet available."""
