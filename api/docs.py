"""``/docs``: the OpenAPI document as one self-contained web page.

The page is rendered on the server from :func:`api.openapi.openapi_document`, so it cannot drift
from what the API serves: a section per kind (its summary, its routes, a table of its fields, read
from the kind's component schemas) and the other routes. It needs no script and loads nothing from
elsewhere; every text from the document passes through :func:`html.escape`.
"""

from __future__ import annotations

import json
from html import escape
from typing import Any, Iterator

import falcon

from models.extension_kinds import ExtensionCatalog

from .openapi import HTTP_METHODS, openapi_document

__all__ = ["Docs", "render_docs"]

_STYLE = """
body { font: 15px/1.5 system-ui, sans-serif; max-width: 72rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
table { border-collapse: collapse; width: 100%; margin: .5rem 0 1.5rem; }
th, td { border-bottom: 1px solid #ddd; padding: .3rem .5rem; text-align: left; vertical-align: top; }
code { font-family: ui-monospace, monospace; }
.method { font-weight: bold; font-family: ui-monospace, monospace; }
.note { color: #666; font-size: .9em; }
section { border-top: 2px solid #eee; margin-top: 2rem; }
"""


class Docs:
    """``/docs``"""

    def __init__(self, app: falcon.App, catalog: ExtensionCatalog) -> None:
        self.app = app
        self.catalog = catalog
        self._rendered: tuple[Any, str] = (None, "")

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        document = openapi_document(self.app, extension_kinds=self.catalog.models())
        source, page = self._rendered
        if source is not document:
            page = render_docs(document)
            self._rendered = (document, page)
        resp.content_type = "text/html; charset=utf-8"
        resp.text = page


def render_docs(document: dict[str, Any]) -> str:
    """The HTML page of an OpenAPI document built by :func:`api.openapi.openapi_document`."""
    schemas = document.get("components", {}).get("schemas", {})
    kinds = [tag for tag in document.get("tags", []) if tag["name"] in schemas]
    info = document["info"]
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{escape(info['title'])} {escape(info['version'])}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>{escape(info['title'])} <small class=note>{escape(info['version'])}</small></h1>",
        f"<p>{escape(info.get('description', ''))}</p>",
        '<p>The same, for machines: <a href="/openapi.json">/openapi.json</a> (OpenAPI 3.1).</p>',
        "<nav><h2>Kinds</h2><ul>",
        *(
            f'<li><a href="#{_anchor(tag["name"])}">{escape(tag["name"])}</a> '
            f"<span class=note>{escape(tag.get('description', ''))}</span></li>"
            for tag in kinds
        ),
        '<li><a href="#other-routes">Other routes</a></li></ul></nav>',
    ]
    kind_names = {tag["name"] for tag in kinds}
    for tag in kinds:
        parts.extend(_kind_section(document, tag, kind_names))
    parts.append('<section id="other-routes"><h2>Other routes</h2>')
    parts.extend(_routes_table(document, lambda tags: not kind_names.intersection(tags)))
    parts.append("</section></body></html>")
    return "\n".join(parts)


def _anchor(kind: str) -> str:
    return escape(f"kind-{kind}")


def _kind_section(document: dict[str, Any], tag: dict[str, Any], kind_names: set[str]) -> Iterator[str]:
    kind = tag["name"]
    yield f'<section id="{_anchor(kind)}"><h2>{escape(kind)}</h2>'
    yield f"<p>{escape(tag.get('description', ''))}</p>"
    yield "<h3>Routes</h3>"
    yield from _routes_table(document, lambda tags: kind in tags)
    yield "<h3>Fields</h3>"
    yield "<table><tr><th>Name</th><th>Type</th><th>Required</th><th>Writable</th><th>Description</th></tr>"
    for name, schema, required, writable in _fields(document["components"]["schemas"], kind):
        description = escape(schema.get("description", ""))
        if "default" in schema:
            description += f" <span class=note>Default: <code>{escape(json.dumps(schema['default']))}</code></span>"
        if schema.get("writeOnly"):
            description += " <strong>Write-only</strong> <span class=note>(secret: never returned)</span>"
        yield (
            f"<tr><td><code>{escape(name)}</code></td><td>{_type_cell(schema, kind_names)}</td>"
            f"<td>{'yes' if required else ''}</td><td>{'yes' if writable else ''}</td><td>{description}</td></tr>"
        )
    yield "</table></section>"


def _routes_table(document: dict[str, Any], wanted) -> Iterator[str]:
    yield "<table><tr><th>Method</th><th>Path</th><th>Summary</th></tr>"
    for path, item in document["paths"].items():
        for method in HTTP_METHODS:
            operation = item.get(method)
            if operation is None or not wanted(operation.get("tags", [])):
                continue
            open_route = " <span class=note>(no token)</span>" if operation.get("security") == [] else ""
            yield (
                f"<tr><td class=method>{escape(method.upper())}</td><td><code>{escape(path)}</code></td>"
                f"<td>{escape(operation.get('summary', ''))}{open_route}</td></tr>"
            )
    yield "</table>"


def _fields(schemas: dict[str, Any], kind: str) -> Iterator[tuple[str, dict[str, Any], bool, bool]]:
    """(name, schema, required on create, writable) of every field: those shown, then the secrets."""
    shown = schemas[kind].get("properties", {})
    create = schemas.get(f"{kind}Create", {})
    written = create.get("properties", {})
    required = set(create.get("required", []))
    for name, schema in shown.items():
        if name != "kind":
            yield name, written.get(name, schema), name in required, name in written
    for name, schema in written.items():
        if name not in shown:
            yield name, schema, name in required, True


def _type_cell(schema: dict[str, Any], kind_names: set[str]) -> str:
    text = escape(_type_text(schema))
    target = schema.get("x-references")
    if target:
        link = f'<a href="#{_anchor(target)}">{escape(target)}</a>' if target in kind_names else escape(target)
        text += f" → {link}"
    return text


def _type_text(schema: dict[str, Any]) -> str:
    choices = schema.get("anyOf")
    if choices:
        return " or ".join(_type_text(choice) for choice in choices)
    if "const" in schema:
        return json.dumps(schema["const"])
    text = str(schema.get("type", "any"))
    if schema.get("format"):
        text += f" ({schema['format']})"
    if schema.get("type") == "array" and isinstance(schema.get("items"), dict):
        text += f" of {_type_text(schema['items'])}"
    if schema.get("enum"):
        text += ": " + " | ".join(json.dumps(value) for value in schema["enum"])
    if "minimum" in schema and "maximum" in schema:
        text += f" {schema['minimum']}–{schema['maximum']}"
    return text
