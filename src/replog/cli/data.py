"""The ``replog data``command (placeholder until implemented)."""

from __future__ import annotations

import click


@click.command()
def data() -> None:
    """Not implemented yet."""
    raise click.ClickException("not implemented yet")
