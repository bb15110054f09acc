"""`sluice ui`: a read-only web dashboard over the bucket, on Starlette and uvicorn, with server-rendered pages.

It reads what the CLI reads (ml/status.py, ml/runs.py, ml/registry.py, ml/quarantine.py) and writes
nothing: every route is a GET. Pages:

    /                                  datasets, models, dead letters
    /datasets/{dataset}                the ledger (every drop and its outcome), data versions with drift, quarantine
    /datasets/{dataset}/data/{dv}      one data version: its source, rows, and drift per column (PSI)
    /datasets/{dataset}/quarantine/{id}  one quarantine report with its example rows
    /runs/{dataset}                    runs with metrics; pick two to compare
    /runs/{dataset}/{run}              one run: metrics, configuration, top features, its plots
    /compare?a=RUN&b=RUN               two runs side by side
    /models/{model}?at=TIME&page=N     versions (20 a page), stages, gate intervals, the newest 50 history records,
                                       the champion at TIME
    /models/{model}/{version}          one version: the gate's verdict and its lineage as a graph
    /artifact/{run}/{name}             a run's PNG plot, checked against the sha256 the run recorded
    /trace/{id or key}                 one drop's path (`sluice trace`): each stage's start, end and outcome
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from sluice.core.errors import SluiceError
from sluice.core.settings import Settings

log = logging.getLogger("sluice.ui")
PLOTS = ("loss_curve", "importance")  # the only artifacts served: images the run rendered itself
TOP_FEATURES = 10
EXAMPLE_ROWS = 20
VERSIONS_SHOWN = 20  # a model page lists this many versions, newest first, with links to older pages
HISTORY_SHOWN = 50  # and this many of the newest history records (`sluice models history NAME --all`: every one)


def top_features(importance: dict[str, float], n: int = TOP_FEATURES) -> list[tuple[str, float]]:
    """The `n` most important features, most important first."""
    return sorted(importance.items(), key=lambda kv: (-kv[1], kv[0]))[:n]


def lineage_graph(version: dict[str, Any]) -> dict[str, Any]:
    """Nodes in columns (model version <- run <- feature set <- data versions <- source objects) and their edges."""
    lin = version["lineage"]
    columns: list[list[dict[str, str]]] = [
        [{"id": "version", "label": f"{version['model']} v{version['version']}",
          "detail": f"model sha256 {version['artifact']['sha256'][:16]}"}],
        [{"id": "run", "label": lin["run_id"], "detail": f"contract {lin['contract_version'][:12]}"}],
        [{"id": "features", "label": lin["feature_set_version"], "detail": "feature set"}],
        [{"id": f"dv:{dv}", "label": f"data {dv[:12]}", "detail": "validated data version"}
         for dv in lin["data_versions"]],
        [{"id": f"src:{s['sha256']}", "label": s["key"], "detail": f"sha256 {s['sha256']}"}
         for s in lin["sources"]],
    ]
    edges = [("version", "run"), ("run", "features")]
    edges += [("features", f"dv:{dv}") for dv in lin["data_versions"]]
    edges += [(f"dv:{s['sha256']}", f"src:{s['sha256']}") for s in lin["sources"]
              if s["sha256"] in lin["data_versions"]]
    width, row_h, col_w, box_w, box_h = 1180, 64, 235, 215, 46
    height = max(len(c) for c in columns) * row_h + 20
    where: dict[str, tuple[float, float]] = {}
    nodes = []
    for i, column in enumerate(columns):
        top = (height - len(column) * row_h) / 2
        for j, node in enumerate(column):
            x, y = 10 + i * col_w, top + j * row_h + 8
            where[node["id"]] = (x, y)
            nodes.append({**node, "x": x, "y": y})
    mid = box_h / 2
    lines = [{"x1": where[a][0] + box_w, "y1": where[a][1] + mid, "x2": where[b][0], "y2": where[b][1] + mid}
             for a, b in edges if a in where and b in where]
    return {"width": width, "height": height, "nodes": nodes, "edges": lines, "box_w": box_w, "box_h": box_h}


def document_page(key: str) -> str | None:
    """The dashboard page that shows a document of a drop's path, if one does."""
    from sluice.core import keys

    for parse, href in (
            (keys.Run.parse, lambda k: f"/runs/{k.dataset}/{k.run_id}"),
            (keys.Quarantine.parse, lambda k: f"/datasets/{k.dataset}/quarantine/{k.ident[:16]}"),
            (keys.Validated.parse, lambda k: None if k.labels else f"/datasets/{k.dataset}/data/{k.version[:16]}"),
            (keys.Ledger.parse, lambda k: f"/datasets/{k.dataset}")):
        try:
            return href(parse(key))  # type: ignore[no-untyped-call]
        except ValueError:
            continue
    parts = key.split("/")
    if key.startswith(keys.REGISTRY) and len(parts) == 4 and parts[2] == "versions" and parts[3][:6].isdigit():
        return f"/models/{parts[1]}/{int(parts[3][:6])}"
    return None


class Dashboard:
    """The dashboard's reads and its Starlette application."""

    def __init__(self, settings: Settings, store: Any = None, state: Any = None):
        from jinja2 import Environment, PackageLoader, select_autoescape

        from sluice.handlers import build_pipeline
        from sluice.infra.broker import make_state
        from sluice.infra.store import S3Store
        from sluice.ml.registry import ModelRegistry

        self.settings = settings
        self.pipeline = build_pipeline()  # its stages' time limits say when an arrival is stuck
        self.store = store if store is not None else S3Store(settings)
        self.registry = ModelRegistry(self.store, state if state is not None else make_state(settings))
        self.templates = Environment(loader=PackageLoader("sluice", "templates"), autoescape=select_autoescape())
        self.templates.filters["pct"] = lambda v: "-" if v is None else f"{v:.1%}"
        self.templates.filters["num"] = lambda v, d=4: "-" if v is None else (f"{v:.{d}f}" if isinstance(v, float)
                                                                                else str(v))

    def render(self, template: str, **context: Any) -> str:
        """One page."""
        return self.templates.get_template(template).render(bucket=self.settings.bucket, **context)

    # -- pages -----------------------------------------------------------------------------------------------
    def home(self) -> str:
        """Datasets, models and dead letters."""
        from sluice.ml.status import dataset_status, datasets, dead_letters

        overview = [dataset_status(self.store, self.registry.state, d, pipeline=self.pipeline)
                    for d in datasets(self.store)]
        return self.render("home.html", datasets=overview, models=self.registry.models(),
                           dead_letters=dead_letters(self.store))

    def dataset(self, name: str) -> str:
        """The ledger, the data versions with their drift, the quarantine."""
        from sluice.ml import quarantine
        from sluice.ml.status import data_versions, dataset_status

        status = dataset_status(self.store, self.registry.state, name, pipeline=self.pipeline)
        status["arrivals"].sort(key=lambda a: a.get("at") or "", reverse=True)
        return self.render("dataset.html", ds=status, versions=data_versions(self.store, name),
                           quarantine=quarantine.entries(self.store, name))

    def data_version(self, dataset: str, dv: str) -> str:
        """One data version and its drift per column."""
        from sluice.ml.status import data_versions

        matches = [v for v in data_versions(self.store, dataset) if v["data_version"].startswith(dv)]
        if len(matches) != 1:
            raise SluiceError(f"{'no' if not matches else 'more than one'} data version of {dataset} matches {dv!r}")
        version = matches[0]
        drift = version.get("drift")
        psi = sorted((drift or {}).get("psi", {}).items(), key=lambda kv: -kv[1])
        scale = max([drift["psi_threshold"] * 2 if drift else 0.0] + [v for _, v in psi] + [1e-9])
        return self.render("data_version.html", dataset=dataset, v=version, drift=drift, psi=psi, scale=scale)

    def quarantine_entry(self, dataset: str, ident: str) -> str:
        """One quarantine report with example rows."""
        from sluice.ml import quarantine

        entry = quarantine.find(self.store, dataset, ident)
        frame = quarantine.rows(self.store, entry)
        rows = frame.head(EXAMPLE_ROWS).to_dicts() if frame is not None else []
        return self.render("quarantine.html", dataset=dataset, e=entry, r=entry.report, rows=rows,
                           columns=list(rows[0]) if rows else [], total=frame.height if frame is not None else 0)

    def runs(self, dataset: str) -> str:
        """Runs with their metrics."""
        from sluice.ml.runs import list_runs

        found = list_runs(self.store, dataset)
        return self.render("runs.html", dataset=dataset, runs=[r for r in found if "holdout" in r],
                           running=[r for r in found if "holdout" not in r])

    def run(self, run_id: str) -> str:
        """One run."""
        from sluice.ml.runs import find_run

        run = find_run(self.store, run_id)
        return self.render("run.html", run=run, top=top_features(run.get("feature_importance", {})),
                           plots=[p for p in PLOTS if p in run["artifacts"]])

    def compare(self, a: str, b: str) -> str:
        """Two runs side by side."""
        from sluice.ml.runs import compare, find_run

        ra, rb = find_run(self.store, a), find_run(self.store, b)
        return self.render("compare.html", diff=compare(ra, rb), a=ra, b=rb,
                           plots=[p for p in PLOTS if p in ra["artifacts"] and p in rb["artifacts"]])

    def model(self, name: str, at: str | None, page: int = 1) -> str:
        """One page of versions with stages and gate intervals, the newest history records, and the champion at a
        time: a few requests whatever the history's length (the index's page and the history's tail)."""
        from sluice.ml.registry import parse_time

        if page < 1:
            raise SluiceError(f"?page= takes a page number from 1 (the model page of {name} is /models/{name})")
        listing = self.registry.page(name, page=page, limit=VERSIONS_SHOWN)
        if not listing["total"]:
            raise SluiceError(f"no model {name!r}; models: {', '.join(self.registry.models()) or 'none'}")
        if not listing["versions"]:
            raise SluiceError(f"{name} has {listing['pages']} page(s) of versions, not {page}")
        history, records = self.registry.history_tail(name, HISTORY_SHOWN)
        answer: dict[str, Any] | None = None
        if at:
            when = parse_time(at)
            number, cause = self.registry.champion_at(name, when)
            answer = {"at": when.isoformat(), "champion": number, "cause": cause}
        return self.render("model.html", name=name, listing=listing, history=list(reversed(history)),
                           records=records, at=at or "", answer=answer,
                           now=datetime.now(UTC).isoformat(timespec="seconds"))

    def version(self, name: str, number: int) -> str:
        """One version: the gate's verdict and the lineage graph (its stage from the index, its records among the
        newest history records)."""
        version = self.registry.version(name, number)
        if version is None:
            raise SluiceError(f"{name} has no version {number}")
        history, records = self.registry.history_tail(name, HISTORY_SHOWN)
        return self.render("version.html", v=version, stage=self.registry.stage(name, number) or "-",
                           graph=lineage_graph(version), history=[r for r in history if r["version"] == number
                                    or any(c.get("version") == number for c in r.get("changes") or [])],
                           records=records, shown=len(history))

    def trace(self, ref: str) -> str:
        """One drop's path: each stage's start, end and outcome, with links to what it wrote."""
        from sluice.ml.trace import trace

        found = trace(self.store, self.registry.state, ref)
        return self.render("trace.html", t=found, links={d: href for s in found.steps for d in s.documents
                                                         if (href := document_page(d))})

    def plot(self, run_id: str, name: str) -> bytes:
        """A run's PNG plot, checked against its recorded sha256."""
        from sluice.ml.runs import artifact, find_run

        if name not in PLOTS:
            raise SluiceError(f"{name!r} is not a plot; plots: {', '.join(PLOTS)}")
        run = find_run(self.store, run_id)
        if name not in run["artifacts"]:
            raise SluiceError(f"run {run_id} has no {name} plot")
        return artifact(self.store, run, name)

    # -- HTTP ------------------------------------------------------------------------------------------------
    def app(self) -> Any:
        """The Starlette application: GET routes only."""
        from starlette.applications import Starlette
        from starlette.concurrency import run_in_threadpool
        from starlette.requests import Request
        from starlette.responses import HTMLResponse, Response
        from starlette.routing import Route

        def page(read: Any) -> Any:
            async def endpoint(request: Request) -> Response:
                try:
                    body = await run_in_threadpool(read, request)
                except SluiceError as exc:  # a wrong id in the address: say so, with a way back
                    return HTMLResponse(self.render("error.html", message=str(exc)), 404)
                if isinstance(body, bytes):
                    return Response(body, media_type="image/png", headers={"Cache-Control": "max-age=86400"})
                return HTMLResponse(body)
            return endpoint

        def p(request: Request, name: str) -> Any:
            return request.path_params[name]

        routes = [
            Route("/", page(lambda r: self.home())),
            Route("/datasets/{dataset}", page(lambda r: self.dataset(p(r, "dataset")))),
            Route("/datasets/{dataset}/data/{dv}", page(lambda r: self.data_version(p(r, "dataset"), p(r, "dv")))),
            Route("/datasets/{dataset}/quarantine/{ident}",
                  page(lambda r: self.quarantine_entry(p(r, "dataset"), p(r, "ident")))),
            Route("/runs/{dataset}", page(lambda r: self.runs(p(r, "dataset")))),
            Route("/runs/{dataset}/{run}", page(lambda r: self.run(p(r, "run")))),
            Route("/compare", page(lambda r: self.compare(r.query_params.get("a", ""), r.query_params.get("b", "")))),
            Route("/models/{model}", page(lambda r: self.model(p(r, "model"), r.query_params.get("at"),
                                                               _page_number(r.query_params.get("page", "1"))))),
            Route("/models/{model}/{version:int}", page(lambda r: self.version(p(r, "model"), p(r, "version")))),
            Route("/artifact/{run}/{name}", page(lambda r: self.plot(p(r, "run"), p(r, "name")))),
            Route("/trace/{ref:path}", page(lambda r: self.trace(p(r, "ref")))),
        ]
        return Starlette(routes=routes)


def _page_number(text: str) -> int:
    """A `?page=` value; anything that is not a whole number from 1 is page 0, which no model has."""
    return int(text) if text.isdigit() and len(text) < 10 else 0


def run_ui(host: str, port: int, settings: Settings | None = None) -> None:
    """Serve the dashboard until interrupted."""
    import uvicorn

    uvicorn.run(Dashboard(settings or Settings.from_env()).app(), host=host, port=port, log_level="warning",
                access_log=False)
