"""Which model serves which kind, by kind name and by URL plural.

The API routes ``/v0/<plural>`` and the workers route a message's ``kind``
through here, so neither imports the model modules (nor ``tasks``) by name.
A kind registers itself with the :func:`register` class decorator when its
module is imported; :mod:`models` imports every built-in kind.
"""

from __future__ import annotations

from typing import TypeVar

from .base import ReconciledModel
from .errors import NotFound

__all__ = ["register", "by_kind", "by_plural", "kinds"]

M = TypeVar("M", bound=type[ReconciledModel])

_by_kind: dict[str, type[ReconciledModel]] = {}
_by_plural: dict[str, type[ReconciledModel]] = {}


def register(model: M) -> M:
    """Class decorator: make ``model`` reachable by its ``kind`` and ``plural``.

    Raises ValueError when either is taken by another model, or missing.
    """
    for attribute in ("kind", "plural", "queue"):
        if not getattr(model, attribute, None):
            raise ValueError(f"{model.__name__} must declare {attribute!r} to be registered")
    for index, key in ((_by_kind, model.kind), (_by_plural, model.plural)):
        if index.get(key, model) is not model:
            raise ValueError(f"{key!r} is already registered to {index[key].__name__}")
    _by_kind[model.kind] = model
    _by_plural[model.plural] = model
    return model


def by_kind(kind: str) -> type[ReconciledModel]:
    """The model of ``kind``; :class:`~models.errors.NotFound` when there is none."""
    try:
        return _by_kind[kind]
    except KeyError:
        raise NotFound(f"no kind named {kind!r}") from None


def by_plural(plural: str) -> type[ReconciledModel]:
    """The model served at ``/v0/<plural>``; :class:`~models.errors.NotFound` when there is none."""
    try:
        return _by_plural[plural]
    except KeyError:
        raise NotFound(f"no kind is served as {plural!r}") from None


def kinds() -> list[type[ReconciledModel]]:
    """Every registered model, in registration order."""
    return list(_by_kind.values())
