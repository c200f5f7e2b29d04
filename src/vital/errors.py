"""User-facing errors: one line that says what is wrong and how to fix it."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class VitalError(Exception):
    """An error caused by the user's input; the CLI prints it as one line and exits non-zero."""


def closest(name: str, candidates: Iterable[str], n: int = 5) -> str:
    """Format the closest matches of `name` for an error message ("" when none is close)."""
    cands = list(dict.fromkeys(candidates))
    matches = difflib.get_close_matches(name, cands, n=n, cutoff=0.5)
    if not matches:
        matches = [c for c in cands if name.lower() in c.lower()][:n]
    return f" Closest: {', '.join(matches)}." if matches else ""
