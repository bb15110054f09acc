"""The model registry, in the bucket under `registry/<model>/`.

    versions/000001.json   one immutable document per version (run, metrics, artifact, lineage, decision)
    aliases/champion.json  which version serves, since when, and which it replaced
    history/               append-only transitions, one object each

Registration runs under a per-model lock, and each version document is created with a conditional write
(If-None-Match), so concurrent registrations can neither lose nor reuse a number.
"""

from __future__ import annotations

from typing import Any

from sluice.infra.state import StateBackend
from sluice.infra.store import S3Store

LOCK_TIMEOUT_S = 60
CHAMPION = "champion"
# Transitions recorded at the same instant happen in this order.
ACTION_ORDER = {"registered": 0, "rejected": 1, "promoted": 1, "archived": 2}


class ModelRegistry:
    """Versions, aliases and history of models."""

    def __init__(self, store: S3Store, state: StateBackend):
        self.store = store
        self.state = state

    @staticmethod
    def base(model: str) -> str:
        """The model's prefix."""
        return f"registry/{model}"

    def version_numbers(self, model: str) -> list[int]:
        """All version numbers, ascending."""
        prefix = f"{self.base(model)}/versions/"
        return sorted(int(k[len(prefix):].split(".")[0]) for k in self.store.keys(prefix) if k.endswith(".json"))

    def version(self, model: str, number: int) -> dict[str, Any] | None:
        """One version document."""
        doc: dict[str, Any] | None = self.store.get_json_or_none(f"{self.base(model)}/versions/{number:06d}.json")
        return doc

    def versions(self, model: str) -> list[dict[str, Any]]:
        """Every version document, ascending."""
        return [v for n in self.version_numbers(model) if (v := self.version(model, n)) is not None]

    def alias(self, model: str, name: str = CHAMPION) -> dict[str, Any] | None:
        """The alias document ({version, since, previous}), or None."""
        doc: dict[str, Any] | None = self.store.get_json_or_none(f"{self.base(model)}/aliases/{name}.json")
        return doc

    def champion(self, model: str) -> dict[str, Any] | None:
        """The champion's version document."""
        alias = self.alias(model)
        return self.version(model, int(alias["version"])) if alias else None

    def history(self, model: str) -> list[dict[str, Any]]:
        """Every recorded transition, oldest first."""
        docs = [self.store.get_json(k) for k in self.store.keys(f"{self.base(model)}/history/")]
        return sorted(docs, key=lambda d: (d["at"], ACTION_ORDER.get(d["action"], 9), d["version"]))

    def models(self) -> list[str]:
        """Names of all registered models."""
        names = {k.split("/")[1] for k in self.store.keys("registry/") if "/versions/" in k}
        return sorted(names)

    def register(self, model: str, doc: dict[str, Any], *, promote: bool, at: str) -> tuple[dict[str, Any], bool]:
        """Register the run in `doc` as the next version (once per run); promote it if asked.

        Returns the version document and whether this call created it. Safe to call again after a crash at
        any point: the run's existing version is found, and an unfinished promotion is completed.
        """
        with self.state.lock(f"registry:{model}", LOCK_TIMEOUT_S):
            existing = next((v for v in self.versions(model) if v["run_id"] == doc["run_id"]), None)
            created = existing is None
            if existing is None:
                numbers = self.version_numbers(model)
                number = (numbers[-1] if numbers else 0) + 1
                while True:
                    version = {**doc, "model": model, "version": number, "registered_at": at,
                               "decision": "promote" if promote else "reject"}
                    if self.store.put_json(f"{self.base(model)}/versions/{number:06d}.json", version, if_absent=True):
                        break
                    number += 1  # someone outside the lock took it: the conditional write keeps us honest
                self._record(model, number, "registered", at, reasons=doc.get("reasons", []))
                existing = version
            if existing["decision"] == "promote":
                self._promote(model, existing, at)
            else:
                self._record(model, existing["version"], "rejected", at, reasons=existing.get("reasons", []))
            return existing, created

    def _promote(self, model: str, version: dict[str, Any], at: str) -> None:
        alias = self.alias(model)
        current = int(alias["version"]) if alias else None
        if current is not None and current >= version["version"]:
            return  # already champion, or a later version has been promoted since
        self.store.put_json(f"{self.base(model)}/aliases/{CHAMPION}.json",
                            {"version": version["version"], "since": at, "previous": current})
        self._record(model, version["version"], "promoted", at, previous=current,
                     reasons=version.get("reasons", []))
        if current is not None:
            self._record(model, current, "archived", at, replaced_by=version["version"])

    def _record(self, model: str, number: int, action: str, at: str, **details: Any) -> None:
        key = f"{self.base(model)}/history/v{number:06d}-{action}.json"
        self.store.put_json(key, {"model": model, "version": number, "action": action, "at": at,
                                  "by": "sluice", **details}, if_absent=True)
