"""HTML pages from the templates in `vital/pages/templates` (Jinja2, autoescaping on): every value a page shows, from
a record, a store, a circuit or a file name, is escaped by construction, never by hand. The pages share one base
template and one stylesheet (`vital.css`)."""

from __future__ import annotations

import functools
import html
import os
import urllib.parse
from importlib import resources
from typing import Any

import jinja2
from markupsafe import Markup

STYLESHEET = "vital.css"


def printable(value: Any) -> Any:
    """Text as a page can hold it: names that are not UTF-8 (surrogate escapes) get a replacement mark."""
    if isinstance(value, str) and not isinstance(value, Markup):
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return value


def text(value: Any) -> Markup:
    """Escaped for an element's content, where quotes need no escaping (a JSON dump in <pre> stays readable)."""
    return Markup(html.escape(str(printable(value)), quote=False))


@functools.cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("vital.pages", "templates"), autoescape=True,
                             finalize=printable, undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.filters["text"] = text
    return env


def render(template: str, **context: Any) -> str:
    """The template `template` filled with `context` (every value escaped unless it is `Markup`)."""
    return environment().get_template(template).render(**context)


def asset(name: str) -> str:
    """A file shipped beside the templates (the stylesheet, the atlas's script)."""
    return resources.files("vital.pages").joinpath("templates", name).read_text(encoding="utf-8")


def url(path: str | os.PathLike) -> str:
    """A relative link: the percent-encoded bytes of the path, so that '#', '%', '?', spaces and names that are
    not UTF-8 all resolve."""
    return urllib.parse.quote(os.fsencode(path))
