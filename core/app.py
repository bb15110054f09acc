"""Registration, chalice-style: one path in, two structures out, plus the app's own extensions.

    app = App("shop")
    app.include(sluice.builtin)                       # the built-in chain is a blueprint like any other

    @app.on_object_created(prefix="exports/", suffix=".csv")
    def export(event, ctx): ...

`routes` is declarative (which object-store prefixes wake which stage): provisioning turns it into bucket
notifications. `handlers` maps a stage name to its callable: the runtime turns it into Dramatiq actors.
`extensions` holds the checks, feature functions and learners a contract may name: they come from the user's
code (the app), never from the bucket. A `Blueprint` records the same registrations and replays them when an
app includes it, so nothing depends on import order.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sluice.core.errors import AppError

if TYPE_CHECKING:
    from sluice.core.context import Context
    from sluice.events.s3 import ObjectCreated

Handler = Callable[["ObjectCreated", "Context"], Any]

KNOWN_OPTIONS = {"time_limit_s", "max_retries", "time_limit_from_contract"}
# A stage name becomes a Dramatiq actor name and an S3 notification id.
STAGE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,62}$")
EXTENSION_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
BUILTIN_LEARNERS = ("lgbm", "xgboost", "xgb_limitdepth", "linear")  # ml.modeling.FORMAT_OF_LEARNER


@dataclass(frozen=True)
class Route:
    """Objects created under `prefix` (and ending with `suffix`) wake the stage `name`."""

    name: str
    prefix: str
    suffix: str = ""
    options: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    blueprint: str | None = field(default=None, compare=False)  # the blueprint that registered it; None: the app

    def matches(self, key: str) -> bool:
        """True when an object with this key should wake the stage."""
        return key.startswith(self.prefix) and key.endswith(self.suffix)

    def filter_rules(self) -> list[dict[str, str]]:
        """The S3 notification filter for this route."""
        rules = [{"Name": "prefix", "Value": self.prefix}]
        if self.suffix:
            rules.append({"Name": "suffix", "Value": self.suffix})
        return rules


@dataclass(frozen=True)
class NewObject:
    """A handler's request to write an object; the runtime writes it (signed under a stage prefix, recorded as the
    stage's output), and a route that matches its key wakes that stage next. `body`: bytes, text, or a JSON-able
    dict or list."""

    key: str
    body: bytes | str | dict[str, Any] | list[Any]
    content_type: str | None = None


@dataclass(frozen=True)
class Learner:
    """A FLAML custom estimator, and how its fitted model is stored without pickle.

    `save(model) -> bytes` turns the fitted model (the estimator's `.estimator`, or the FLAML estimator itself)
    into a non-code format (JSON, a library's own text format); `load(bytes)` returns an object with `predict`
    (regression) or `predict_proba` (classification) over a float matrix whose columns are the training columns.
    """

    name: str
    estimator: type
    save: Callable[[Any], bytes]
    load: Callable[[bytes], Any]

    @property
    def format(self) -> str:
        """The model format recorded in the run and the bundle."""
        return f"custom:{self.name}"


@dataclass
class Extensions:
    """What a contract may name beyond the built-ins: validation checks, feature functions, learners."""

    checks: dict[str, Callable[..., Any]] = field(default_factory=dict)
    features: dict[str, Callable[..., Any]] = field(default_factory=dict)
    learners: dict[str, Learner] = field(default_factory=dict)

    def check(self, name: str) -> Callable[..., Any]:
        """The registered check `name`, or an error naming what is registered and how to register it."""
        if name not in self.checks:
            raise unregistered("check", name, sorted(self.checks), "@app.check")
        return self.checks[name]

    def feature(self, name: str) -> Callable[..., Any]:
        """The registered feature function `name` (see `check`)."""
        if name not in self.features:
            raise unregistered("feature function", name, sorted(self.features), "@app.feature")
        return self.features[name]

    def learner(self, name: str) -> Learner:
        """The registered learner `name` (see `check`)."""
        if name not in self.learners:
            raise unregistered("learner", name, [*BUILTIN_LEARNERS, *sorted(self.learners)], "app.learner")
        return self.learners[name]

    def missing(self, contract: Any) -> list[str]:
        """What `contract` names that this app does not register, each as a sentence with the fix."""
        out = []
        for column, spec in contract.columns.items():
            for check in spec.checks:
                name = check if isinstance(check, str) else next(iter(check))
                if name not in self.checks:
                    out.append(f"column {column!r}: {unregistered('check', name, sorted(self.checks), '@app.check')}")
        for t in contract.features:
            if t.op == "custom" and t.function not in self.features:
                out.append(f"feature {t.name!r}: " + str(unregistered("feature function", str(t.function),
                                                                        sorted(self.features), "@app.feature")))
        for est in contract.training.estimators:
            if est not in BUILTIN_LEARNERS and est not in self.learners:
                out.append("training.estimators: " + str(unregistered(
                    "learner", est, [*BUILTIN_LEARNERS, *sorted(self.learners)], "app.learner")))
        return out


def unregistered(kind: str, name: str, registered: list[str], how: str) -> AppError:
    """The error for a contract that names something this app does not register."""
    have = ", ".join(registered) if registered else "none"
    return AppError(f"{kind} {name!r} is not registered in this app (registered: {have}). Register it in your app "
                    f"with `{how}({name!r})` and run the worker with `--app module:app`, or remove it from the "
                    "contract.")


class App:
    """The stages of a Sluice deployment and the extensions its contracts may name."""

    def __init__(self, name: str = "sluice") -> None:
        self.name = name
        self.routes: list[Route] = []
        self.handlers: dict[str, Handler] = {}
        self.extensions = Extensions()
        self.blueprints: list[str] = []
        self._including: str | None = None  # the blueprint being included, recorded on its routes

    # -- stages ---------------------------------------------------------------------------------------------------

    def on_object_created(
        self, name: str | None = None, *, prefix: str, suffix: str = "", **options: Any
    ) -> Callable[[Handler], Handler]:
        """Register a stage for objects created under `prefix` (and ending with `suffix`); its name defaults to
        the function's. Unknown options, name clashes and overlapping filters fail here, not at deploy time."""
        unknown = set(options) - KNOWN_OPTIONS
        if unknown:
            raise AppError(f"stage {name or '(unnamed)'!r}: unknown options {sorted(unknown)}; "
                           f"known: {sorted(KNOWN_OPTIONS)}")
        if not prefix:
            raise AppError(f"stage {name or '(unnamed)'!r}: a prefix is needed (a stage woken by every object "
                           "would also be woken by its own outputs)")
        if name is not None:
            self._check_stage(name, prefix, suffix)

        def register(handler: Handler) -> Handler:
            stage = name or str(getattr(handler, "__name__", ""))
            if name is None:
                self._check_stage(stage, prefix, suffix)
            self.routes.append(Route(stage, prefix, suffix, dict(options), blueprint=self._including))
            self.handlers[stage] = handler
            return handler

        return register

    def _check_stage(self, name: str, prefix: str, suffix: str) -> None:
        if not STAGE_NAME.match(name):
            raise AppError(f"stage name {name!r}: use letters, digits, '-' and '_' (at most 63)")
        if name in self.handlers:
            raise AppError(f"stage {name!r} is registered twice; give one of them another name (name=...)")
        for other in self.routes:
            if _overlaps(other, prefix, suffix):
                raise AppError(f"stage {name!r} (prefix {prefix!r}, suffix {suffix!r}) overlaps stage {other.name!r} "
                               f"(prefix {other.prefix!r}, suffix {other.suffix!r}); S3 rejects overlapping "
                               "notification filters: pick a prefix of your own")

    def match(self, key: str) -> list[Route]:
        """The routes an object key wakes."""
        return [r for r in self.routes if r.matches(key)]

    # -- extensions -----------------------------------------------------------------------------------------------

    def check(self, name: str | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Register a validation check a contract names under a column's `checks:`.

        The function takes the column as a polars expression (and the contract's parameters as keywords) and
        returns a boolean expression, true for valid rows; or it is a `pandera.Check` already.
        """
        return self._extension("check", self.extensions.checks, name)

    def feature(self, name: str | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Register a feature function a contract names as `{name: ..., op: custom, function: NAME, columns: [...]}`.

        The function takes one polars expression per column (and parameters as keywords) and returns an expression.
        It runs when the feature set is materialized and again when a loaded model scores rows."""
        return self._extension("feature function", self.extensions.features, name)

    def learner(self, name: str, estimator: type, *, save: Callable[[Any], bytes] | None = None,
                load: Callable[[bytes], Any] | None = None) -> Learner:
        """Register a FLAML custom estimator that `training.estimators` may name.

        Sluice never stores or loads pickle: `save` and `load` say how the fitted model is written in a format
        that loads without running code (see `Learner`)."""
        self._name("learner", name)
        if name in BUILTIN_LEARNERS or name in self.extensions.learners:
            raise AppError(f"learner {name!r} is registered twice (built in: {', '.join(BUILTIN_LEARNERS)})")
        if not isinstance(estimator, type):
            raise AppError(f"learner {name!r}: pass the estimator class (a flaml SKLearnEstimator subclass), "
                           f"not {type(estimator).__name__}")
        if save is None or load is None:
            raise AppError(f"learner {name!r}: Sluice never stores or loads pickle, so a custom learner must say how "
                           "its fitted model is saved and loaded in a format that runs no code: "
                           f"app.learner({name!r}, {estimator.__name__}, save=to_json_bytes, load=from_json_bytes)")
        learner = Learner(name, estimator, save, load)
        self.extensions.learners[name] = learner
        return learner

    def _extension(self, kind: str, table: dict[str, Callable[..., Any]],
                   name: str | None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        if name is not None:
            self._name(kind, name)
            if name in table:
                raise AppError(f"{kind} {name!r} is registered twice")

        def register(fn: Callable[..., Any]) -> Callable[..., Any]:
            key = name or str(getattr(fn, "__name__", ""))
            if name is None:
                self._name(kind, key)
                if key in table:
                    raise AppError(f"{kind} {key!r} is registered twice")
            if not callable(fn) and type(fn).__name__ != "Check":
                raise AppError(f"{kind} {key!r}: expected a function, got {type(fn).__name__}")
            table[key] = fn
            return fn

        return register

    @staticmethod
    def _name(kind: str, name: str) -> None:
        if not EXTENSION_NAME.match(name):
            raise AppError(f"{kind} name {name!r}: use lowercase letters, digits and '_', starting with a letter")

    # -- blueprints -----------------------------------------------------------------------------------------------

    def include(self, blueprint: Blueprint) -> App:
        """Register everything `blueprint` recorded, in order, through the same checks as the app's own."""
        if not isinstance(blueprint, Blueprint):
            raise AppError("app.include expects a sluice Blueprint (e.g. sluice.builtin), got "
                           f"{type(blueprint).__name__}")
        if blueprint.name in self.blueprints:
            raise AppError(f"blueprint {blueprint.name!r} is included twice")
        self._including = blueprint.name
        try:
            for replay in blueprint.deferred:
                replay(self)
        finally:
            self._including = None
        self.blueprints.append(blueprint.name)
        return self

    def __repr__(self) -> str:
        return f"App({self.name!r}, stages={[r.name for r in self.routes]})"


# Sluice's internals still say Pipeline: the same object.
Pipeline = App


class Blueprint:
    """Registrations recorded for later: nothing is wired until an app includes the blueprint."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.deferred: list[Callable[[App], Any]] = []

    def on_object_created(
        self, name: str | None = None, *, prefix: str, suffix: str = "", **options: Any
    ) -> Callable[[Handler], Handler]:
        """As `App.on_object_created`, checked when an app includes the blueprint."""
        unknown = set(options) - KNOWN_OPTIONS
        if unknown:  # what can be checked now is checked now
            raise AppError(f"stage {name or '(unnamed)'!r}: unknown options {sorted(unknown)}; "
                           f"known: {sorted(KNOWN_OPTIONS)}")

        def record(handler: Handler) -> Handler:
            self.deferred.append(lambda app: app.on_object_created(name, prefix=prefix, suffix=suffix,
                                                                   **options)(handler))
            return handler

        return record

    def check(self, name: str | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """As `App.check`."""
        def record(fn: Callable[..., Any]) -> Callable[..., Any]:
            self.deferred.append(lambda app: app.check(name)(fn))
            return fn

        return record

    def feature(self, name: str | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """As `App.feature`."""
        def record(fn: Callable[..., Any]) -> Callable[..., Any]:
            self.deferred.append(lambda app: app.feature(name)(fn))
            return fn

        return record

    def learner(self, name: str, estimator: type, *, save: Callable[[Any], bytes] | None = None,
                load: Callable[[bytes], Any] | None = None) -> None:
        """As `App.learner`."""
        self.deferred.append(lambda app: app.learner(name, estimator, save=save, load=load))

    def __repr__(self) -> str:
        return f"Blueprint({self.name!r}, {len(self.deferred)} registrations)"


def _overlaps(route: Route, prefix: str, suffix: str) -> bool:
    prefixes = route.prefix.startswith(prefix) or prefix.startswith(route.prefix)
    suffixes = route.suffix.endswith(suffix) or suffix.endswith(route.suffix)
    return prefixes and suffixes
