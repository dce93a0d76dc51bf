"""The CLI's side of the API client: :mod:`tasks.api_client`, and errors as one line for the user."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import typer

from tasks.api_client import (
    DEFAULT_TIMEOUT,
    PAGE_SIZE,
    ApiClient,
    ApiError,
    Catalog,
    ClientError,
    Field,
    Kind,
    UnknownKind,
    token_problem,
)

__all__ = [
    "ClientError",
    "ApiError",
    "UnknownKind",
    "ApiClient",
    "Catalog",
    "Kind",
    "Field",
    "DEFAULT_TIMEOUT",
    "PAGE_SIZE",
    "reported_errors",
    "token_problem",
]


@contextmanager
def reported_errors() -> Iterator[None]:
    """A :class:`ClientError` becomes one ``error:`` line on stderr and exit code 1 (no traceback)."""
    try:
        yield
    except ClientError as exc:
        typer.echo(f"error: {_one_line(str(exc))}", err=True)
        raise typer.Exit(1) from None


def _one_line(text: str) -> str:
    return " ".join(text.split())
