"""Which model serves which kind, by kind name and by URL plural.

The API routes ``/v0/<plural>`` and the workers route a message's ``kind``
through here, so neither imports the model modules (nor ``tasks``) by name.
A kind registers itself with the :func:`register` class decorator when its
module is imported; :mod:`models` imports every built-in kind.
"""

from __future__ import annotations

from typing import TypeVar

from .base import LIFECYCLE_FIELDS, KindModel, ReconciledModel
from .errors import NotFound

__all__ = ["register", "by_kind", "by_plural", "kinds", "reconciled_kinds", "set_extension_kinds", "extension_kinds"]

M = TypeVar("M", bound=type[KindModel])

_by_kind: dict[str, type[KindModel]] = {}
_by_plural: dict[str, type[KindModel]] = {}
#: Kinds extensions registered at runtime (by qualified kind), replaced as a whole on every change.
_extension_kinds: dict[str, type[ReconciledModel]] = {}


def register(model: M) -> M:
    """Class decorator: make ``model`` reachable by its ``kind`` and ``plural``.

    A reconciled kind without ``spec_fields`` gets every field it declares
    beyond the lifecycle's. Raises ValueError when the kind or plural is
    taken by another model, or missing (or, for a reconciled kind, its queue).
    """
    required = ("kind", "plural", "queue") if issubclass(model, ReconciledModel) else ("kind", "plural")
    for attribute in required:
        if not getattr(model, attribute, None):
            raise ValueError(f"{model.__name__} must declare {attribute!r} to be registered")
    for index, key in ((_by_kind, model.kind), (_by_plural, model.plural)):
        if index.get(key, model) is not model:
            raise ValueError(f"{key!r} is already registered to {index[key].__name__}")
    if issubclass(model, ReconciledModel) and not model.spec_fields:
        model.spec_fields = tuple(name for name in model._meta.sorted_field_names if name not in LIFECYCLE_FIELDS)
    _by_kind[model.kind] = model
    _by_plural[model.plural] = model
    return model


def by_kind(kind: str) -> type[KindModel]:
    """The model of ``kind``; :class:`~models.errors.NotFound` when there is none."""
    model = _by_kind.get(kind) or _extension_kinds.get(kind)
    if model is None:
        raise NotFound(f"no kind named {kind!r}")
    return model


def by_plural(plural: str) -> type[KindModel]:
    """The model served at ``/v0/<plural>``; :class:`~models.errors.NotFound` when there is none."""
    try:
        return _by_plural[plural]
    except KeyError:
        raise NotFound(f"no kind is served as {plural!r}") from None


def kinds() -> list[type[KindModel]]:
    """Every built-in model, in registration order (extension kinds: :func:`extension_kinds`)."""
    return list(_by_kind.values())


def reconciled_kinds() -> list[type[ReconciledModel]]:
    """Every built-in kind the control plane reconciles, in registration order."""
    return [model for model in _by_kind.values() if issubclass(model, ReconciledModel)]


def set_extension_kinds(models: list[type[ReconciledModel]]) -> None:
    """Replace the kinds extensions registered (see :mod:`models.extension_kinds`), by their qualified kind."""
    global _extension_kinds
    _extension_kinds = {model.kind: model for model in models}


def extension_kinds() -> list[type[ReconciledModel]]:
    """The extension kinds this process knows of, as of its catalog's last refresh."""
    return list(_extension_kinds.values())
