"""What every command needs: the settings, the object store, JSON output."""

from __future__ import annotations

import json
from typing import Any

import click

from sluice.core.settings import Settings


def settings() -> Settings:
    """The settings, from the environment."""
    return Settings.from_env()


def store(s: Settings) -> Any:
    """The bucket of these settings."""
    from sluice.infra.store import S3Store

    return S3Store(s)


def echo_json(doc: Any) -> None:
    """Pretty, sorted JSON on stdout."""
    click.echo(json.dumps(doc, indent=2, sort_keys=True, default=str))
