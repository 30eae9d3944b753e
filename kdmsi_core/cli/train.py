"""placeholder"""
import click


@click.command("train")
def command() -> None:
    """Not yet available."""
