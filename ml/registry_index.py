"""The registry's index: the history folded into signed pages, so that no read or write depends on its length.

    registry/<model>/index/head.json                 the state after history record `sequence` (champion,
                                                     challenger, their `since`, the sha256 of that record, the
                                                     number of versions, of champion changes, the rollback depth),
                                                     and its `tail`: the entries written since their pages were
    registry/<model>/index/stages/000000.json        [stage, last gate record, last rescore record, the gate
                                                     record's action] of versions 1-1000 (then 1001-2000 in
                                                     000001.json, ...)
    registry/<model>/index/docs/000000.json          the version documents 1-20, as registered (for `show`)
    registry/<model>/index/timeline/000000.json      [at, sequence, champion] of each change of champion, in time
                                                     order: `--at` is a bisection in one page
    registry/<model>/index/champions/000000.json     the champions in the order they served (rollback pops)
    registry/<model>/index/runs/<run id>.json        which version a run became (registration is once per run)

The history stays the truth; the index is a cache of a prefix of it, written under the model's lock after the
history records it folds in. A write puts its entries in the head's tail, which stands over the pages: a
registration writes one index object (the head, at once with the aliases and the version document, which it lists
as `pending` for the next writer to repair if they did not land: see ModelRegistry._flush) and reads none but the
head. When the tail has grown past `TAIL`, its entries move into their pages (read, then written before the head;
the entries every write reads, the champion's and the challenger's stages and the top of the champions stack,
stay in the tail). Every entry is
stored at a position (never appended), and only the head says how many are valid, so a writer killed between the
history and the head leaves pages that agree with the history, and the next reader or writer folds in the records
the head does not cover yet (a reader looks for record `sequence + 1` on every load; a writer's first record,
created with If-None-Match at that number, is its look: see ModelRegistry._write). Like every object under
`registry/`, each page is signed, and read only if its signature holds; a missing or refused head is rebuilt
from the whole history (checked as a chain).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

from sluice.core.ports import ObjectStore

FORMAT = 3
READABLE = (2, FORMAT)  # a format-2 head is a format-3 head with an empty tail
PAGE = {"stages": 1000, "docs": 20, "timeline": 500, "champions": 1000}
# The head carries the entries written since the pages were last rewritten (its `tail`), so that a write changes
# one object; once the tail holds more than this, its entries move into their pages (but the hot ones: the stages
# of the champion and the challenger, the top of the champions stack, which every write reads).
TAIL = {"entries": 64, "docs": 8}
RUNS = "runs"  # the tail's run -> version map (the pointers under index/runs/ not written yet)


def digest(doc: dict[str, Any]) -> str:
    """The sha256 of a document's canonical JSON: what the next history record commits to."""
    normal = json.loads(json.dumps(doc, default=str))  # as stored: what a reader of the bucket hashes
    return hashlib.sha256(json.dumps(normal, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def steps(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The transitions a history record holds, in order: a registration's one record holds all of its own (its
    `steps`: registered, the gate's verdict, a promotion), any other record is one transition."""
    found = record.get("steps")
    return list(found) if isinstance(found, list) else [record]


def registers(record: dict[str, Any]) -> bool:
    """True when a history record registers its version (on its own, or as the first of its steps)."""
    return any(step.get("action") == "registered" for step in steps(record))


def actions(record: dict[str, Any]) -> str:
    """What a history record did, for people: `registered+challenger+promoted` for a registration's record."""
    return "+".join(str(step.get("action")) for step in steps(record))


def empty_head(model: str) -> dict[str, Any]:
    """The index of a model with no history."""
    return {"format": FORMAT, "model": model, "sequence": 0, "digest": None, "at": None, "versions": 0,
            "champion": None, "challenger": None, "champion_since": None, "challenger_since": None,
            "previous_champion": None, "depth": 0, "timeline": 0, "timeline_starts": [], "tail": {}}


class Index:
    """The registry state after a prefix of the history, read page by page; changes are buffered until the
    registry writes them (`dirty`)."""

    def __init__(self, store: ObjectStore, model: str, head: dict[str, Any], *, fresh: bool = False):
        self.store = store
        self.model = model
        self.head = head
        self.fresh = fresh  # being rebuilt: the stored pages are not read
        self.pages: dict[str, list[Any]] = {}
        self.dirty: set[str] = set()
        self.runs: dict[str, int] = {}  # run pointers to write
        self.created: list[dict[str, Any]] = []  # version documents this write registered, to write
        self.restore: list[dict[str, Any]] = []  # version documents the history holds, written again (repairs)
        self.head_dirty = False
        self.folded = False  # history records the stored head did not cover were folded in
        self.rebuilt = False
        self.skipped: list[str] = []  # version documents a rebuild left out, and why
        self.appended = 0  # records this writer appended
        self.probed = False  # looked for a history record newer than the head (or read the whole history)
        self.stored: str | None = None  # the digest of the head as stored (loaded, or written by this writer)

    # -- keys and pages ---------------------------------------------------------------------------------------
    def key(self, kind: str, page: int) -> str:
        """Where one page lives."""
        return f"registry/{self.model}/index/{kind}/{page:06d}.json"

    @staticmethod
    def head_key(model: str) -> str:
        """Where the head lives."""
        return f"registry/{model}/index/head.json"

    @staticmethod
    def run_key(model: str, run_id: str) -> str:
        """Where a run's version pointer lives."""
        return f"registry/{model}/index/runs/{run_id}.json"

    def locate(self, kind: str, position: int) -> tuple[str, int]:
        """The page key and offset of a 0-based position."""
        size = PAGE[kind]
        return self.key(kind, position // size), position % size

    def page(self, key: str) -> list[Any]:
        """A page, read once (IntegrityError when its signature fails)."""
        if key not in self.pages:
            doc = None if self.fresh else self.store.get_json_or_none(key)
            self.pages[key] = list(doc["entries"]) if doc else []
        return self.pages[key]

    def preload(self, key: str, doc: dict[str, Any] | None) -> None:
        """A page read elsewhere (in parallel)."""
        if key not in self.pages:
            self.pages[key] = list(doc["entries"]) if doc else []

    @property
    def tail(self) -> dict[str, dict[str, Any]]:
        """Entries newer than their pages, by kind and position (a string: JSON's keys are)."""
        return self.head.setdefault("tail", {})  # type: ignore[no-any-return]

    def in_tail(self, kind: str, position: int) -> bool:
        """True when the head itself holds the entry at a position."""
        return str(position) in self.tail.get(kind, {})

    def get(self, kind: str, position: int) -> Any:
        """The entry at a position, or None: the tail's when it has one, else its page's."""
        if self.in_tail(kind, position):
            return self.tail[kind][str(position)]
        key, offset = self.locate(kind, position)
        entries = self.page(key)
        return entries[offset] if offset < len(entries) else None

    def entries(self, kind: str, page: int, count: int) -> list[Any]:
        """The first `count` entries of a page, the tail's over the page's."""
        start = page * PAGE[kind]
        tail = self.tail.get(kind, {})
        whole = all(str(start + i) in tail for i in range(count))
        stored = [] if whole else self.page(self.key(kind, page))
        return [tail[str(start + i)] if str(start + i) in tail else (stored[i] if i < len(stored) else None)
                for i in range(count)]

    def set(self, kind: str, position: int, value: Any) -> None:
        """Store an entry at a position (idempotent: folding a record twice gives the same pages): in the tail,
        or straight into its page while the index is being rebuilt."""
        if not self.fresh:
            tail = self.tail.setdefault(kind, {})
            if str(position) not in tail or tail[str(position)] != value:
                tail[str(position)] = value
                self.head_dirty = True
            return
        key, offset = self.locate(kind, position)
        entries = self.page(key)
        if offset >= len(entries):
            entries.extend([None] * (offset + 1 - len(entries)))
        if entries[offset] != value:
            entries[offset] = value
            self.dirty.add(key)

    def page_doc(self, key: str) -> dict[str, Any]:
        """A page as stored."""
        return {"format": FORMAT, "model": self.model, "entries": self.pages[key]}

    def run(self, run_id: str) -> int | None:
        """The version a run became, if the index knows it without its pointer object."""
        found = self.runs.get(run_id, self.tail.get(RUNS, {}).get(run_id))
        return None if found is None else int(found)

    def hot(self) -> list[tuple[str, int]]:
        """The positions every write reads: the champion's and the challenger's stages, the champions stack's top."""
        head = self.head
        found = [("stages", n - 1) for n in (head["champion"], head["challenger"]) if n]
        return found + [("champions", d) for d in range(max(0, int(head["depth"]) - 3), int(head["depth"]))]

    def missing(self, positions: Iterable[tuple[str, int]]) -> list[str]:
        """The pages to read for entries the tail does not hold."""
        return list(dict.fromkeys(self.locate(kind, p)[0] for kind, p in positions if not self.in_tail(kind, p)))

    def keep_hot(self) -> None:
        """Copy the hot entries read from pages into the tail, so that the next write reads none."""
        for kind, position in self.hot():
            if not self.in_tail(kind, position) and self.locate(kind, position)[0] in self.pages:
                self.set(kind, position, self.get(kind, position))

    def spilling(self) -> bool:
        """True when the tail has outgrown `TAIL`: its entries move into their pages now."""
        tail = self.tail
        return not self.fresh and (sum(len(v) for v in tail.values()) > TAIL["entries"]
                                   or len(tail.get("docs", {})) > TAIL["docs"])

    def spill_pages(self) -> list[str]:
        """The pages the tail's entries move into."""
        hot = set(self.hot())
        return sorted({self.locate(kind, int(p))[0] for kind, entries in self.tail.items() if kind != RUNS
                       for p in entries if (kind, int(p)) not in hot})

    def spill(self) -> None:
        """Move the tail's entries but the hot ones into their pages (read already), which are then dirty, and its
        runs into pointers to write. Both are written before the head, so until the head is, both say the same."""
        hot = set(self.hot())
        self.runs.update({run: int(n) for run, n in self.tail.pop(RUNS, {}).items()})
        for kind, entries in self.tail.items():
            for p in [p for p in entries if (kind, int(p)) not in hot]:
                key, offset = self.locate(kind, int(p))
                page = self.page(key)
                if offset >= len(page):
                    page.extend([None] * (offset + 1 - len(page)))
                page[offset] = entries.pop(p)
                self.dirty.add(key)
        self.head["tail"] = {kind: entries for kind, entries in self.tail.items() if entries}
        self.head_dirty = True

    # -- the state --------------------------------------------------------------------------------------------
    @property
    def champion(self) -> int | None:
        """The champion after the last folded record."""
        return self.head["champion"]  # type: ignore[no-any-return]

    @property
    def challenger(self) -> int | None:
        """The challenger after the last folded record."""
        return self.head["challenger"]  # type: ignore[no-any-return]

    @property
    def sequence(self) -> int:
        """The last folded history record."""
        return int(self.head["sequence"])

    @property
    def next_sequence(self) -> int:
        """The number the next history record gets."""
        return self.sequence + 1

    def entry(self, number: int) -> list[Any]:
        """[stage, last gate record, last rescore record, the gate record's action] of a version."""
        found = self.get("stages", number - 1) if number >= 1 else None
        return list(found) if found else [None, None, None, None]

    def stage(self, number: int) -> str | None:
        """A version's lifecycle stage (None: not registered)."""
        return self.entry(number)[0]  # type: ignore[no-any-return]

    def champions_from_top(self, depth: int) -> int | None:
        """The champion `depth` below the top of the stack (0: the current one)."""
        position = int(self.head["depth"]) - 1 - depth
        return self.get("champions", position) if position >= 0 else None

    def doc(self, number: int) -> dict[str, Any] | None:
        """A version document as the index holds it."""
        found = self.get("docs", number - 1)
        return found if isinstance(found, dict) else None

    def set_doc(self, version: dict[str, Any]) -> None:
        """Index a version document (and its run: in the tail, or a pointer to write) under its number."""
        number = int(version["version"])
        self.set("docs", number - 1, version)
        if "run_id" in version:
            if self.fresh:
                self.runs[str(version["run_id"])] = number
            elif self.run(str(version["run_id"])) != number:
                self.tail.setdefault(RUNS, {})[str(version["run_id"])] = number
                self.head_dirty = True
        if number > int(self.head["versions"]):
            self.head["versions"] = number
            self.head_dirty = True

    def apply(self, record: dict[str, Any]) -> None:
        """Fold one history record in (the next one)."""
        head = self.head
        sequence = int(record["sequence"])
        for change in record["changes"]:
            entry = self.entry(change["version"])
            entry[0] = change["to"]
            self.set("stages", change["version"] - 1, entry)
        number = record["version"]
        if record["cause"] == "gate":
            entry = self.entry(number)
            entry[1], entry[3] = sequence, record["action"]
            self.set("stages", number - 1, entry)
        elif record["action"] == "rescored":
            entry = self.entry(number)
            entry[2] = sequence
            self.set("stages", number - 1, entry)
        if registers(record) and number > int(head["versions"]):
            head["versions"] = number
        if record["action"] == "promoted":
            self.set("champions", int(head["depth"]), number)
            head["depth"] += 1
        elif record["action"] == "rolled_back":
            head["depth"] -= 1
        if record["champion"] != record["previous_champion"]:
            position = int(head["timeline"])
            if position % PAGE["timeline"] == 0:
                starts = head["timeline_starts"][: position // PAGE["timeline"]]
                head["timeline_starts"] = [*starts, record["at"]]
            self.set("timeline", position, [record["at"], sequence, record["champion"]])
            head["timeline"] = position + 1
            head["champion_since"] = record["at"] if record["champion"] is not None else None
        if record["action"] == "challenger":
            head["challenger_since"] = record["at"]
        head["champion"], head["challenger"] = record["champion"], record["challenger"]
        if head["challenger"] is None:
            head["challenger_since"] = None
        head["previous_champion"] = self.champions_from_top(1) if head["champion"] is not None else None
        head["sequence"], head["digest"], head["at"] = sequence, digest(record), record["at"]
        self.head_dirty = True

    def alias_docs(self) -> dict[str, dict[str, Any] | None]:
        """What aliases/champion.json and aliases/challenger.json say at this state."""
        head = self.head
        return {
            "champion": None if head["champion"] is None else {
                "version": head["champion"], "since": head["champion_since"], "previous": head["previous_champion"]},
            "challenger": None if head["challenger"] is None else {
                "version": head["challenger"], "since": head["challenger_since"]},
        }

    def timeline_pages(self) -> Iterable[str]:
        """Keys of the timeline pages, oldest first."""
        return (self.key("timeline", p) for p in range(len(self.head["timeline_starts"])))
