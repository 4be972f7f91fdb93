"""The API's reference page at `/api/v1/docs`, drawn by the server from the OpenAPI document
(SPEC §9): every operation with its parameters, body and answers, and every schema with its
fields, as plain HTML in the site's own page.

Swagger UI, which ninja ships, failed axe-core over a hundred times (contrast, buttons inside
buttons, no `lang`) and had no viewport or way back; this page is text, tables and links, so
it reads on a phone, with a screen reader and without JavaScript. Swagger UI stays at
`/api/v1/docs/swagger` for trying calls out with the session.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe
from ninja.openapi.docs import DocsBase

METHODS = ("get", "post", "put", "patch", "delete")
_REF = "#/components/schemas/"


@dataclass(frozen=True)
class TypePart:
    """A piece of a type's description: text, or a schema's name linking to it."""

    text: str
    schema: str = ""

    @property
    def anchor(self) -> str:
        return schema_anchor(self.schema) if self.schema else ""


@dataclass(frozen=True)
class Field:
    name: str
    type: tuple[TypePart, ...]
    required: bool
    description: SafeString
    location: str = ""  # for a parameter: path, query, header


@dataclass(frozen=True)
class Answer:
    status: str
    description: str
    type: tuple[TypePart, ...]


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    summary: str
    description: SafeString
    parameters: list[Field]
    body: tuple[TypePart, ...]
    body_required: bool
    answers: list[Answer]
    anchor: str


@dataclass(frozen=True)
class Section:
    title: str
    anchor: str
    operations: list[Operation] = field(default_factory=list)


@dataclass(frozen=True)
class Schema:
    name: str
    description: SafeString
    fields: list[Field]
    anchor: str
    closed: bool  # additionalProperties false: other fields are refused


@dataclass(frozen=True)
class Reference:
    title: str
    version: str
    description: SafeString
    sections: list[Section]
    schemas: list[Schema]


def reference(document: dict[str, Any]) -> Reference:
    """The page's contents from an OpenAPI 3.1 document, in the document's order; operations
    grouped by their first tag."""
    info = document.get("info", {})
    sections: dict[str, Section] = {}
    for path, item in document.get("paths", {}).items():
        for method in METHODS:
            if method in item:
                operation = _operation(method, path, item[method])
                title = (item[method].get("tags") or ["other"])[0]
                sections.setdefault(title, Section(title.capitalize(), slug(f"tag-{title}")))
                sections[title].operations.append(operation)
    schemas = [
        _schema(name, schema)
        for name, schema in document.get("components", {}).get("schemas", {}).items()
    ]
    return Reference(
        title=info.get("title", "API"),
        version=str(info.get("version", "")),
        description=markup(info.get("description", "")),
        sections=list(sections.values()),
        schemas=schemas,
    )


def _operation(method: str, path: str, operation: dict[str, Any]) -> Operation:
    parameters = [
        Field(
            name=parameter["name"],
            type=type_of(parameter.get("schema", {})),
            required=bool(parameter.get("required")),
            description=markup(
                parameter.get("description") or parameter.get("schema", {}).get("description", "")
            ),
            location=parameter.get("in", ""),
        )
        for parameter in operation.get("parameters", [])
    ]
    body = operation.get("requestBody", {})
    body_schema = body.get("content", {}).get("application/json", {}).get("schema")
    answers = [
        Answer(
            status=str(status),
            description=answer.get("description", ""),
            type=_content_type(answer),
        )
        for status, answer in sorted(operation.get("responses", {}).items())
    ]
    return Operation(
        method=method.upper(),
        path=path,
        summary=operation.get("summary", ""),
        description=markup(operation.get("description", "")),
        parameters=parameters,
        body=type_of(body_schema) if body_schema else (),
        body_required=bool(body.get("required")),
        answers=answers,
        anchor=slug(operation.get("operationId") or f"{method}-{path}"),
    )


def _content_type(answer: dict[str, Any]) -> tuple[TypePart, ...]:
    schema = answer.get("content", {}).get("application/json", {}).get("schema")
    return type_of(schema) if schema else ()


def _schema(name: str, schema: dict[str, Any]) -> Schema:
    required = set(schema.get("required", []))
    fields = [
        Field(
            name=key,
            type=type_of(value),
            required=key in required,
            description=markup(value.get("description", "")),
        )
        for key, value in schema.get("properties", {}).items()
    ]
    return Schema(
        name=name,
        description=markup(schema.get("description", "")),
        fields=fields,
        anchor=schema_anchor(name),
        closed=schema.get("additionalProperties") is False,
    )


def type_of(schema: dict[str, Any]) -> tuple[TypePart, ...]:
    """A JSON Schema as people read it: `string (date-time) or null`, `array of ImageOut`
    (linked), `one of: active, stale`."""
    if "$ref" in schema:
        name = schema["$ref"].removeprefix(_REF)
        return (TypePart(name, schema=name),)
    for combined in ("anyOf", "oneOf"):
        if combined in schema:
            parts: list[TypePart] = []
            for n, option in enumerate(schema[combined]):
                if n:
                    parts.append(TypePart(" or "))
                parts.extend(type_of(option))
            return tuple(parts)
    if "allOf" in schema and len(schema["allOf"]) == 1:
        return type_of(schema["allOf"][0])
    kind = schema.get("type", "any")
    if isinstance(kind, list):
        return (TypePart(" or ".join(kind)),)
    if kind == "array":
        return (TypePart("array of "), *type_of(schema.get("items", {})))
    text = kind
    if "format" in schema:
        text += f" ({schema['format']})"
    if "enum" in schema:
        text += ", one of: " + ", ".join(str(value) for value in schema["enum"])
    limits = _limits(schema)
    if limits:
        text += f" ({limits})"
    return (TypePart(text),)


def _limits(schema: dict[str, Any]) -> str:
    words = {
        "minimum": "at least",
        "maximum": "at most",
        "minLength": "at least {} characters",
        "maxLength": "at most {} characters",
    }
    limits = []
    for key, word in words.items():
        if key in schema:
            limits.append(word.format(schema[key]) if "{}" in word else f"{word} {schema[key]}")
    return ", ".join(limits)


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def schema_anchor(name: str) -> str:
    return f"schema-{slug(name)}"


_CODE = re.compile(r"`([^`]+)`")
_STRONG = re.compile(r"\*\*([^*]+)\*\*")


def markup(text: str) -> SafeString:
    """The document's descriptions are short Markdown: paragraphs, `code` and **bold**.
    Escaped first, so nothing in them becomes markup of its own."""
    paragraphs = [part.strip() for part in re.split(r"\n\s*\n", text or "") if part.strip()]
    html = []
    for paragraph in paragraphs:
        escaped = str(escape(" ".join(paragraph.split())))
        escaped = _CODE.sub(r"<code>\1</code>", escaped)
        escaped = _STRONG.sub(r"<strong>\1</strong>", escaped)
        html.append(f"<p>{escaped}</p>")
    return mark_safe("\n".join(html))  # noqa: S308 - built from escaped text only


class ReferencePage(DocsBase):
    """ninja's docs page, drawn by the server (see the module's docstring)."""

    def render_page(self, request: HttpRequest, api: Any, **kwargs: Any) -> HttpResponse:
        document = api.get_openapi_schema(path_params=kwargs)
        context = {
            "reference": reference(document),
            "openapi_url": self.get_openapi_url(api, kwargs),
            "swagger_url": reverse(f"{api.urls_namespace}:swagger"),
            "tokens_url": reverse("api_tokens"),
        }
        return render(request, "api_docs.html", context)
