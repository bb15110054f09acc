"""Handler registration: one path in, two structures out (chalice-style).

`routes` is declarative (which object-store prefixes wake which stage): provisioning turns it into bucket
notifications. `handlers` maps a stage name to its callable: the runtime turns it into Dramatiq actors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sluice.core.context import Context
    from sluice.events.s3 import ObjectCreated

Handler = Callable[["ObjectCreated", "Context"], list[Any]]

KNOWN_OPTIONS = {"time_limit_s", "max_retries", "time_limit_from_contract"}


@dataclass(frozen=True)
class Route:
    """Objects created under `prefix` (and ending with `suffix`) wake the stage `name`."""

    name: str
    prefix: str
    suffix: str = ""
    options: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def matches(self, key: str) -> bool:
        """True when an object with this key should wake the stage."""
        return key.startswith(self.prefix) and key.endswith(self.suffix)

    def filter_rules(self) -> list[dict[str, str]]:
        """The S3 notification filter for this route."""
        rules = [{"Name": "prefix", "Value": self.prefix}]
        if self.suffix:
            rules.append({"Name": "suffix", "Value": self.suffix})
        return rules


class Pipeline:
    """The stages of a Sluice deployment."""

    def __init__(self) -> None:
        self.routes: list[Route] = []
        self.handlers: dict[str, Handler] = {}

    def on_object_created(
        self, name: str, *, prefix: str, suffix: str = "", **options: Any
    ) -> Callable[[Handler], Handler]:
        """Register `handler` for objects created under `prefix`/`suffix`."""
        unknown = set(options) - KNOWN_OPTIONS
        if unknown:
            raise TypeError(f"stage {name!r}: unknown options {sorted(unknown)}; known: {sorted(KNOWN_OPTIONS)}")
        if name in self.handlers:
            raise ValueError(f"stage {name!r} is registered twice")
        for other in self.routes:
            if _overlaps(other, prefix, suffix):
                raise ValueError(f"stage {name!r} overlaps stage {other.name!r}; S3 rejects overlapping filters")

        def register(handler: Handler) -> Handler:
            self.routes.append(Route(name, prefix, suffix, dict(options)))
            self.handlers[name] = handler
            return handler

        return register

    def match(self, key: str) -> list[Route]:
        """The routes an object key wakes."""
        return [r for r in self.routes if r.matches(key)]


def _overlaps(route: Route, prefix: str, suffix: str) -> bool:
    prefixes = route.prefix.startswith(prefix) or prefix.startswith(route.prefix)
    suffixes = route.suffix.endswith(suffix) or suffix.endswith(route.suffix)
    return prefixes and suffixes
