"""The bucket's layout: every key Sluice writes or reacts to is built and parsed here, and nowhere else.

    contracts/<dataset>.yaml                               Contract
    incoming/<dataset>/<name>   labels/<dataset>/<name>    Drop (name may hold slashes)
    ledger/<dataset>/<object id>.json                      Ledger
    validated/<dataset>/<data version>/<file>              Validated (labels=True: validated-labels/)
    features/<dataset>/<feature set version>/<file>        FeatureSet
    runs/<dataset>/<run id>/<file>                         Run (file: run.json, progress.json, artifacts...)
    registry/<model>/candidates/<run id>.candidate.json    Candidate
    registry/<model>/backtests/<label version>.json        Backtest
    quarantine/<dataset>/<id>/<file>                       Quarantine
    refused/<dataset>/<id>.json                            Refused
    published/<model>/<event id>.json                      Published
    deadletter/<actor>/<message id>.json                   DeadLetter
    traces/<trace id>/<span>.json                          Span (one stage attempt: start, end, outcome)

Each kind is a frozen dataclass: `.key` builds it, `Kind.parse(key)` reads it back (ValueError when the key is
not of that kind), `Kind.prefix(...)` is what to list. Dataset and model names never hold a slash (the contract's
NAME rule), and neither do versions and ids; only a dropped file's name may.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

CONTRACTS = "contracts/"
INCOMING = "incoming/"
LABELS = "labels/"
LEDGER = "ledger/"
VALIDATED = "validated/"
VALIDATED_LABELS = "validated-labels/"
FEATURES = "features/"
RUNS = "runs/"
REGISTRY = "registry/"
QUARANTINE = "quarantine/"
REFUSED = "refused/"
PUBLISHED = "published/"
DEADLETTER = "deadletter/"
TRACES = "traces/"
# What a drop under incoming/ or labels/ may be, by its name: anything else is quarantined as unreadable.
DROP_FORMATS = (".csv", ".csv.gz", ".parquet")

MANIFEST = "manifest.json"
DATA = "data.parquet"
RUN = "run.json"
CANDIDATE_SUFFIX = ".candidate.json"


def _segment(value: str, what: str) -> str:
    if not value or "/" in value:
        raise ValueError(f"{what} {value!r} must be a non-empty name without '/'")
    return value


def _split(key: str, root: str, n: int, kind: str) -> list[str]:
    """`root` + exactly n segments (the last may be empty only when allowed by the caller)."""
    if not key.startswith(root):
        raise ValueError(f"{key!r} is not a {kind} key (expected {root}...)")
    parts = key[len(root):].split("/", n - 1)
    if len(parts) != n or any(not p for p in parts[:-1]):
        raise ValueError(f"{key!r} is not a {kind} key")
    return parts


def dataset_of(key: str) -> str:
    """`<prefix>/<dataset>/...` -> dataset ("_unknown" for a key without one)."""
    parts = key.split("/")
    return parts[1] if len(parts) > 2 and parts[1] else "_unknown"


@dataclass(frozen=True)
class Contract:
    """contracts/<dataset>.yaml"""

    dataset: str

    @property
    def key(self) -> str:
        return f"{CONTRACTS}{_segment(self.dataset, 'dataset')}.yaml"

    @classmethod
    def parse(cls, key: str) -> Contract:
        [name] = _split(key, CONTRACTS, 1, "contract")
        if not name.endswith(".yaml") or "/" in name or name == ".yaml":
            raise ValueError(f"{key!r} is not a contract key")
        return cls(name.removesuffix(".yaml"))


@dataclass(frozen=True)
class Drop:
    """incoming/<dataset>/<name> (labels=True: labels/<dataset>/<name>): a file someone dropped."""

    dataset: str
    name: str
    labels: bool = False

    @staticmethod
    def root(labels: bool = False) -> str:
        return LABELS if labels else INCOMING

    @staticmethod
    def prefix(dataset: str, labels: bool = False) -> str:
        return f"{Drop.root(labels)}{_segment(dataset, 'dataset')}/"

    @property
    def key(self) -> str:
        if not self.name:
            raise ValueError("a dropped file needs a name")
        return f"{self.prefix(self.dataset, self.labels)}{self.name}"

    @classmethod
    def parse(cls, key: str) -> Drop:
        labels = key.startswith(LABELS)
        dataset, name = _split(key, cls.root(labels), 2, "dropped file")
        if not name:
            raise ValueError(f"{key!r} names a folder, not a dropped file")
        return cls(dataset, name, labels)


@dataclass(frozen=True)
class Ledger:
    """ledger/<dataset>/<object id>.json: the outcome of one dropped file."""

    dataset: str
    object_id: str

    @staticmethod
    def prefix(dataset: str) -> str:
        return f"{LEDGER}{_segment(dataset, 'dataset')}/"

    @property
    def key(self) -> str:
        return f"{self.prefix(self.dataset)}{_segment(self.object_id, 'object id')}.json"

    @classmethod
    def parse(cls, key: str) -> Ledger:
        dataset, name = _split(key, LEDGER, 2, "ledger")
        if not name.endswith(".json") or "/" in name or name == ".json":
            raise ValueError(f"{key!r} is not a ledger key")
        return cls(dataset, name.removesuffix(".json"))


@dataclass(frozen=True)
class _Versioned:
    """<root><dataset>/<version>/<file>."""

    ROOT: ClassVar[str] = ""
    KIND: ClassVar[str] = ""

    dataset: str
    version: str
    file: str = MANIFEST

    @classmethod
    def prefix(cls, dataset: str, version: str | None = None) -> str:
        base = f"{cls.ROOT}{_segment(dataset, 'dataset')}/"
        return base if version is None else f"{base}{_segment(version, 'version')}/"

    @property
    def key(self) -> str:
        if not self.file:
            raise ValueError(f"a {self.KIND} key needs a file name")
        return f"{self.prefix(self.dataset, self.version)}{self.file}"


@dataclass(frozen=True)
class Validated(_Versioned):
    """validated/<dataset>/<data version>/<file> (labels=True: validated-labels/...)."""

    ROOT: ClassVar[str] = VALIDATED
    KIND: ClassVar[str] = "validated data"
    labels: bool = False

    @classmethod
    def prefix(cls, dataset: str, version: str | None = None, labels: bool = False) -> str:
        base = f"{VALIDATED_LABELS if labels else VALIDATED}{_segment(dataset, 'dataset')}/"
        return base if version is None else f"{base}{_segment(version, 'version')}/"

    @property
    def key(self) -> str:
        if not self.file:
            raise ValueError("a validated key needs a file name")
        return f"{self.prefix(self.dataset, self.version, self.labels)}{self.file}"

    @classmethod
    def parse(cls, key: str) -> Validated:
        labels = key.startswith(VALIDATED_LABELS)
        dataset, version, file = _split(key, VALIDATED_LABELS if labels else VALIDATED, 3, cls.KIND)
        if not file:
            raise ValueError(f"{key!r} names a folder")
        return cls(dataset, version, file, labels)


@dataclass(frozen=True)
class FeatureSet(_Versioned):
    """features/<dataset>/<feature set version>/<file>."""

    ROOT: ClassVar[str] = FEATURES
    KIND: ClassVar[str] = "feature set"

    @classmethod
    def parse(cls, key: str) -> FeatureSet:
        dataset, version, file = _split(key, FEATURES, 3, cls.KIND)
        if not file:
            raise ValueError(f"{key!r} names a folder")
        return cls(dataset, version, file)


@dataclass(frozen=True)
class Run(_Versioned):
    """runs/<dataset>/<run id>/<file> (`version` is the run id)."""

    ROOT: ClassVar[str] = RUNS
    KIND: ClassVar[str] = "run"
    file: str = RUN

    @property
    def run_id(self) -> str:
        return self.version

    @classmethod
    def parse(cls, key: str) -> Run:
        dataset, run_id, file = _split(key, RUNS, 3, cls.KIND)
        if not file:
            raise ValueError(f"{key!r} names a folder")
        return cls(dataset, run_id, file)


@dataclass(frozen=True)
class Candidate:
    """registry/<model>/candidates/<run id>.candidate.json: a run waiting for the gate."""

    model: str
    run_id: str

    @staticmethod
    def prefix(model: str) -> str:
        return f"{REGISTRY}{_segment(model, 'model')}/candidates/"

    @property
    def key(self) -> str:
        return f"{self.prefix(self.model)}{_segment(self.run_id, 'run id')}{CANDIDATE_SUFFIX}"

    @classmethod
    def parse(cls, key: str) -> Candidate:
        model, middle, name = _split(key, REGISTRY, 3, "candidate")
        if middle != "candidates" or not name.endswith(CANDIDATE_SUFFIX) or "/" in name \
                or name == CANDIDATE_SUFFIX:
            raise ValueError(f"{key!r} is not a candidate key")
        return cls(model, name.removesuffix(CANDIDATE_SUFFIX))


@dataclass(frozen=True)
class Backtest:
    """registry/<model>/backtests/<label version>.json: the champion scored on labels that came later."""

    model: str
    label_version: str

    @staticmethod
    def prefix(model: str) -> str:
        return f"{REGISTRY}{_segment(model, 'model')}/backtests/"

    @property
    def key(self) -> str:
        return f"{self.prefix(self.model)}{_segment(self.label_version, 'label version')}.json"

    @classmethod
    def parse(cls, key: str) -> Backtest:
        model, middle, name = _split(key, REGISTRY, 3, "backtest")
        if middle != "backtests" or not name.endswith(".json") or "/" in name or name == ".json":
            raise ValueError(f"{key!r} is not a backtest key")
        return cls(model, name.removesuffix(".json"))


@dataclass(frozen=True)
class Quarantine:
    """quarantine/<dataset>/<id>/<file> (id: the data version, or the object id of an unreadable file)."""

    dataset: str
    ident: str
    file: str = "report.json"

    @staticmethod
    def prefix(dataset: str, ident: str | None = None) -> str:
        base = f"{QUARANTINE}{_segment(dataset, 'dataset')}/"
        return base if ident is None else f"{base}{_segment(ident, 'quarantine id')}/"

    @property
    def key(self) -> str:
        if not self.file:
            raise ValueError("a quarantine key needs a file name")
        return f"{self.prefix(self.dataset, self.ident)}{self.file}"

    @classmethod
    def parse(cls, key: str) -> Quarantine:
        dataset, ident, file = _split(key, QUARANTINE, 3, "quarantine")
        if not file:
            raise ValueError(f"{key!r} names a folder")
        return cls(dataset, ident, file)


@dataclass(frozen=True)
class _Record:
    """<root><scope>/<id>.json."""

    ROOT: ClassVar[str] = ""
    KIND: ClassVar[str] = ""

    scope: str
    ident: str

    @classmethod
    def prefix(cls, scope: str | None = None) -> str:
        return cls.ROOT if scope is None else f"{cls.ROOT}{_segment(scope, cls.KIND + ' scope')}/"

    @property
    def key(self) -> str:
        return f"{self.prefix(self.scope)}{_segment(self.ident, self.KIND + ' id')}.json"

    @classmethod
    def _parts(cls, key: str) -> tuple[str, str]:
        scope, name = _split(key, cls.ROOT, 2, cls.KIND)
        if not name.endswith(".json") or "/" in name or name == ".json":
            raise ValueError(f"{key!r} is not a {cls.KIND} key")
        return scope, name.removesuffix(".json")


@dataclass(frozen=True)
class Refused(_Record):
    """refused/<dataset>/<id>.json: an event a stage would not act on."""

    ROOT: ClassVar[str] = REFUSED
    KIND: ClassVar[str] = "refusal"

    @classmethod
    def parse(cls, key: str) -> Refused:
        return cls(*cls._parts(key))


@dataclass(frozen=True)
class Published(_Record):
    """published/<model>/<event id>.json: a model event that went out."""

    ROOT: ClassVar[str] = PUBLISHED
    KIND: ClassVar[str] = "publication"

    @classmethod
    def parse(cls, key: str) -> Published:
        return cls(*cls._parts(key))


@dataclass(frozen=True)
class DeadLetter(_Record):
    """deadletter/<actor>/<message id>.json: a stage message that exhausted its retries."""

    ROOT: ClassVar[str] = DEADLETTER
    KIND: ClassVar[str] = "dead letter"

    @classmethod
    def parse(cls, key: str) -> DeadLetter:
        return cls(*cls._parts(key))


@dataclass(frozen=True)
class Span(_Record):
    """traces/<trace id>/<span>.json: one attempt of one stage within a drop's trace (core/tracing.py).

    The span name starts with the attempt's start time, so a listing of the trace is in the order things ran."""

    ROOT: ClassVar[str] = TRACES
    KIND: ClassVar[str] = "span"

    @property
    def trace_id(self) -> str:
        return self.scope

    @classmethod
    def parse(cls, key: str) -> Span:
        return cls(*cls._parts(key))
