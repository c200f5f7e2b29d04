"""Reading JSON written by vital (run records, circuits, store indexes) field by field: a file edited by hand or
written by another program is one line naming the file and the field, never a traceback deep inside a reader."""

from __future__ import annotations

import json
from typing import Any, NoReturn

from vital.errors import VitalError


class Fields:
    """Reads one JSON value field by field; any surprise is one `VitalError` naming the file and the field (and
    ending in `tail`, what to do about it)."""

    KINDS: dict[str, tuple[type, ...]] = {"text": (str,), "whole number": (int,), "number": (int, float),
                                          "list": (list,), "object": (dict,), "bool": (bool,)}

    def __init__(self, where: str, tail: str):
        self.where, self.tail = where, tail

    def fail(self, name: str, problem: str) -> NoReturn:
        raise VitalError(f"{self.where}: {name} {problem}; {self.tail}")

    def value(self, value: Any, kind: str, name: str, optional: bool = False) -> Any:
        if value is None and optional:
            return None
        if (isinstance(value, bool) and kind != "bool") or not isinstance(value, self.KINDS[kind]):
            shown = "null" if value is None else type(value).__name__
            self.fail(name, f"is {shown} ({short(value)}), not {'a' if kind != 'object' else 'an'} {kind}")
        return value

    def key(self, obj: dict, key: str, kind: str, name: str = "", optional: bool = False, default: Any = None) -> Any:
        if key not in obj:
            if optional:
                return default
            raise VitalError(f"{self.where} lacks {name + '.' if name else ''}{key}; {self.tail}")
        return self.value(obj[key], kind, f"{name}.{key}" if name else key, optional)

    def numbers(self, value: Any, name: str) -> list[float]:
        for i, v in enumerate(self.value(value, "list", name)):
            self.value(v, "number", f"{name}[{i}]")
        return list(value)


def short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."
