"""The statements run for every object, their SQL written once per model.

Peewee writes a query's SQL anew each time it runs it. For a row of twenty
columns that costs more CPU than the round trip itself (about 0.4 ms for a
SELECT by id on a build machine, half of a whole ``store.get``). The
statements the control loop runs at least once per object (load by id,
insert, the status write) are written here once per model and shape, and
run with each field's own conversions (``db_value`` on the way in, peewee's
row conversion on the way out), so they read and write exactly what the
equivalent peewee queries would.

On a connection that can remember them (:class:`models.database.
PreparingConnection`: PostgreSQL), each statement is also prepared on the
server the first time the connection runs it (``PREPARE``) and run by name
afterwards (``EXECUTE``): the server parses and plans it once per
connection instead of once per call (the status write with its event:
640 → 380 µs of the server's CPU). Elsewhere (CockroachDB) it is sent as it is.
"""

from __future__ import annotations

import functools
import itertools
import re
import uuid
from typing import Any, Iterable, Mapping, Optional, Sequence, TypeVar, Union

import peewee

__all__ = ["execute", "insert", "select_by_id", "update", "update_by_id"]

M = TypeVar("M", bound=peewee.Model)


def select_by_id(model: type[M], object_id: uuid.UUID, *, for_update: bool = False) -> Optional[M]:
    """The row of ``model`` with ``object_id`` (every column), or None."""
    sql, params = _by_name(
        model._meta.database, [(_select_sql(model, for_update), [model._meta.primary_key.db_value(object_id)])]
    )
    row = model._meta.database.execute_sql(sql, params).fetchone()
    if row is None:
        return None
    # Built as peewee builds a selected row (each field's python_value, then the model with
    # those values and nothing dirty), without the per-query set-up of its cursor wrapper.
    obj = model(__no_default__=1, **{name: read(value) for (name, read), value in zip(_readers(model), row)})
    obj._dirty.clear()
    return obj


def insert(*objs: peewee.Model, if_absent: bool = False) -> None:
    """Insert each object with the values it holds (its defaults included), as ``save(force_insert=True)`` would.

    They go to the server in one round trip, as one batch of statements:
    outside a transaction, the server runs the batch as one transaction of
    its own (PostgreSQL and CockroachDB alike). With ``if_absent``, a row
    whose id is already there is left as it is (``ON CONFLICT (id) DO
    NOTHING``): the batch run again after its answer was lost.
    """
    batch: list[tuple[str, Params]] = []
    for obj in objs:
        model = type(obj)
        data = obj.__data__
        names = tuple(name for name in model._meta.sorted_field_names if name in data)
        fields = model._meta.fields
        batch.append((_insert_sql(model, names, if_absent), [fields[name].db_value(data[name]) for name in names]))
    if batch:
        execute(objs[0]._meta.database, batch)
    for obj in objs:
        obj._dirty.clear()  # saved, as after save()


def update_by_id(model: type[peewee.Model], object_id: uuid.UUID, values: Mapping[str, Any], **clauses: Any) -> int:
    """Run :func:`update`: how many rows changed (0 or 1)."""
    return execute(model._meta.database, [update(model, object_id, values, **clauses)]).rowcount


def update(
    model: type[peewee.Model],
    object_id: uuid.UUID,
    values: Mapping[str, Any],
    *,
    increment: Iterable[str] = (),
    merge: Optional[Mapping[str, Mapping[str, Any]]] = None,
    where: Optional[Mapping[str, Any]] = None,
) -> tuple[str, dict[str, Any]]:
    """The UPDATE of one row by id, as SQL and named parameters (to run, or to embed in a larger statement).

    ``values`` sets fields; each field of ``increment`` goes up by one; each
    JSON field of ``merge`` gets the keys given merged into it (``||``);
    ``where`` adds equality conditions (``{"generation": 3}``).
    """
    merge = merge or {}
    where = where or {}
    fields = model._meta.fields
    params = {f"set_{name}": fields[name].db_value(value) for name, value in values.items()}
    params.update({f"merge_{name}": fields[name].db_value(value) for name, value in merge.items()})
    params.update({f"where_{name}": fields[name].db_value(value) for name, value in where.items()})
    params["where_id"] = model._meta.primary_key.db_value(object_id)
    return _update_sql(model, (tuple(values), tuple(increment), tuple(merge), tuple(where))), params


#: A statement's parameters: positional (``%s``) or named (``%(name)s``).
Params = Union[Sequence[Any], Mapping[str, Any]]


def execute(database: peewee.Database, batch: list[tuple[str, Params]]):
    """Run the statements of ``batch`` in one round trip (one implicit transaction outside BEGIN): the cursor."""
    sql, params = _by_name(database, batch)
    return database.execute_sql(sql, params)


def _by_name(database: peewee.Database, batch: list[tuple[str, Params]]) -> tuple[str, list[Any]]:
    """The batch as one SQL text and its parameters: ``EXECUTE``s of prepared statements where the connection can."""
    connection = database.connection()
    prepared = getattr(connection, "prepared", None)
    if prepared is None:  # a connection that cannot remember them: the statements as they are
        if len(batch) == 1 and not isinstance(batch[0][1], Sequence):
            return batch[0][0], batch[0][1]  # named parameters
        return "; ".join(sql for sql, _ in batch), [value for _, params in batch for value in _positional(params)]
    texts: list[str] = []
    values: list[Any] = []
    for sql, params in batch:
        name, preparation, order = _preparation(sql)
        if name not in prepared:
            with connection.cursor() as cursor:
                cursor.execute(preparation)
            prepared.add(name)
        given = [params[key] for key in order] if isinstance(params, Mapping) else list(params)
        texts.append(f"EXECUTE {name} ({', '.join(['%s'] * len(given))})" if given else f"EXECUTE {name}")
        values += given
    return "; ".join(texts), values


def _positional(params: Params) -> Sequence[Any]:
    if isinstance(params, Mapping):
        raise TypeError("statements in a batch take positional parameters")
    return params


_PLACEHOLDER = re.compile(r"%\((\w+)\)s|%s")
_numbers = itertools.count(1)  # next() on a count is atomic: threads may take numbers at once


@functools.lru_cache(maxsize=4096)
def _preparation(sql: str) -> tuple[str, str, tuple[str, ...]]:
    """A name for ``sql``, its ``PREPARE`` and the order of its named parameters ($1, $2, … in the statement)."""
    order: list[str] = []
    positional = itertools.count(1)

    def number(match: re.Match) -> str:
        key = match.group(1)
        if key is None:
            return f"${next(positional)}"
        if key not in order:
            order.append(key)
        return f"${order.index(key) + 1}"

    name = f"threeport_{next(_numbers)}"
    return name, f"PREPARE {name} AS {_PLACEHOLDER.sub(number, sql)}", tuple(order)


def _column(model: type[peewee.Model], name: str) -> str:
    return _quoted(model._meta.fields[name].column_name)


def _quoted(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


@functools.lru_cache(maxsize=1024)
def _readers(model: type[peewee.Model]) -> tuple[tuple[str, Any], ...]:
    """Each column of ``_select_sql``'s, in its order: the field's name and its conversion from the database."""
    return tuple((field.name, field.python_value) for field in model._meta.sorted_fields)


@functools.lru_cache(maxsize=1024)
def _select_sql(model: type[peewee.Model], for_update: bool) -> str:
    columns = ", ".join(_quoted(field.column_name) for field in model._meta.sorted_fields)
    key = _column(model, model._meta.primary_key.name)
    sql = f"SELECT {columns} FROM {_quoted(model._meta.table_name)} WHERE {key} = %s"
    return sql + " FOR UPDATE" if for_update else sql


@functools.lru_cache(maxsize=1024)
def _insert_sql(model: type[peewee.Model], names: tuple[str, ...], if_absent: bool) -> str:
    columns = ", ".join(_column(model, name) for name in names)
    placeholders = ", ".join(["%s"] * len(names))
    sql = f"INSERT INTO {_quoted(model._meta.table_name)} ({columns}) VALUES ({placeholders})"
    return sql + f" ON CONFLICT ({_column(model, model._meta.primary_key.name)}) DO NOTHING" if if_absent else sql


@functools.lru_cache(maxsize=1024)
def _update_sql(model: type[peewee.Model], shape: tuple[tuple[str, ...], ...]) -> str:
    values, increment, merge, where = shape
    assignments = [f"{_column(model, name)} = %(set_{name})s" for name in values]
    assignments += [f"{_column(model, name)} = {_column(model, name)} + 1" for name in increment]
    assignments += [f"{_column(model, name)} = {_column(model, name)} || %(merge_{name})s" for name in merge]
    conditions = [f"{_column(model, model._meta.primary_key.name)} = %(where_id)s"]
    conditions += [f"{_column(model, name)} = %(where_{name})s" for name in where]
    table = _quoted(model._meta.table_name)
    return f"UPDATE {table} SET {', '.join(assignments)} WHERE {' AND '.join(conditions)}"
