"""The ``replog check``command (placeholder until implemented)."""

from __future__ import annotations

import click


@click.command()
def check() -> None:
    """Not implemented yet."""
    raise click.ClickException("not implemented yet")
