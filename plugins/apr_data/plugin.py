"""Registers ``apr data`` through `apr_register_commands`: a builder of datasets is not a
technique of a kind, so it adds a click group of its own."""

from __future__ import annotations

from apr_core.plugins import hookimpl


@hookimpl
def apr_register_commands(cli):
    from .commands import data

    cli.add_command(data)
