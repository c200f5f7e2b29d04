"""A method's defaults and their history, declared by the method itself (`OptionHistory`), so that the run record
can be read, upgraded and rerun without knowing any method's option names, and a default is changed in one place:
the command line's help and the tests read it from here."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

GROUPS = ("class", "channel")  # channels and directions share their defaults


def group_of(kinds: Sequence[str]) -> str:
    """"class" when every target of a run is a class, else "channel"."""
    return "class" if all(k == "class" for k in kinds) else "channel"


def shown(value: Any) -> str:
    """A default as the help text and the options tables write it (1.0 -> "1", 3e-07 -> "3e-07")."""
    return f"{value:g}" if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class OptionHistory:
    """What a method's options mean when a run leaves them unset, now and in records written earlier.

    `defaults[group][option]`: what None resolves to today, for a run of classes or of channels (group), where
    that is not the options dataclass's own field default. `changed[group][option]`: the default before it
    changed; a record that left the option unset and holds no resolved value (its recipe) ran with it.
    `legacy_extra`: today's names of the keys of the `extra` bag of records from before typed options;
    `legacy(options, classes)`: what else such a record's options meant for this method."""

    defaults: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    changed: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    legacy_extra: Mapping[str, str] = field(default_factory=dict)
    legacy: Callable[[dict[str, Any], bool], dict[str, Any]] | None = None

    def upgrade(self, known: Collection[str], kinds: Sequence[str], options: dict[str, Any]) -> dict[str, Any]:
        """Options of a record written before methods had typed options (one bag with every method's fields and
        an `extra` dict): what the method used, under today's names; newer options are returned as they are."""
        if "extra" not in options:
            return dict(options)
        out = {k: v for k, v in options.items() if k != "extra" and k in known}
        extra = options["extra"] if isinstance(options["extra"], dict) else {}
        out.update({self.legacy_extra[k]: v for k, v in extra.items() if k in self.legacy_extra})
        return self.legacy(out, group_of(kinds) == "class") if self.legacy is not None else out

    def pin(self, kinds: Sequence[str], options: dict[str, Any], recipe: dict[str, Any]) -> dict[str, Any]:
        """`options` with every default that changed since the run, and that the run left unset, replaced by the
        value the run resolved (its recipe) or, for a record older than that, the value before the change."""
        out = dict(options)
        for name, before in self.changed.get(group_of(kinds), {}).items():
            if out.get(name) is None:
                out[name] = recipe.get(name, before)
        return out
