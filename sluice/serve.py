"""`sluice serve`: an HTTP JSON scoring service for one model alias, on Starlette and uvicorn.

- `POST /predict` takes `{"rows": [{...}, ...]}` (or a bare list of row objects, or one object) and answers with
  every row's prediction (or why it could not be scored) and the version that scored it.
- The service keeps its own SQS queue subscribed to the model topic, filtered to this model's `promoted` and
  `rolled_back` events. On one, it loads the alias's new version completely (verified, as `sluice.load_model`
  does), then swaps one reference. A request reads that reference once, so it is answered wholly by the old
  version or wholly by the new one, and no request fails during a swap. The alias is also re-read every
  `recheck_s` seconds, so a missed event only delays a swap.
- `GET /health` (the process is up), `GET /ready` (a model is loaded), `GET /model` (what is serving).
- A request Sluice cannot score gets a 4xx saying what is wrong; never a 500 for bad input.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from sluice.core.errors import SluiceError
from sluice.core.settings import Settings
from sluice.events.model import PROMOTED, ROLLED_BACK
from sluice.ml.bundle import Model

log = logging.getLogger("sluice.serve")
MAX_ROWS = 10_000
MAX_BODY_BYTES = 16 * 1024 * 1024


class ModelServer:
    """The serving state: which version answers, and the watcher that swaps it."""

    def __init__(self, name: str, alias: str = "champion", *, settings: Settings | None = None,
                 store: Any = None, recheck_s: float = 30.0, watch: bool = True, bundle: str | None = None,
                 app: Any = None):
        self.name, self.alias = name, alias
        self.bundle = bundle  # a downloaded bundle folder: serve it as is, without the bucket
        self.settings = settings or Settings.from_env()
        self.store = store
        self.user_app = app  # the user's app, for models that name its feature functions or learners
        self.recheck_s = recheck_s
        self.watch = watch
        self.model: Model | None = None
        self.swaps: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._subscription: Any = None

    # -- model lifecycle -------------------------------------------------------------------------------------
    def refresh(self, why: str = "startup") -> bool:
        """Load the alias's current version if it is not the one serving; True when a swap happened."""
        # The public loader: without a store handed in, it opens the settings' bucket (the CLI hands none).
        from sluice import load_model

        if self.bundle is not None:
            fresh = load_model(self.bundle, app=self.user_app)
        else:
            fresh = load_model(f"{self.name}@{self.alias}", settings=self.settings, store=self.store, app=self.user_app)
        current = self.model
        if current is not None and current.version == fresh.version and current.bundle_sha256 == fresh.bundle_sha256:
            return False
        self.model = fresh  # one reference assignment: requests see the old model or the new, never a mix
        self.swaps.append({"version": fresh.version, "at": time.time(), "at_monotonic": time.monotonic(), "why": why})
        log.info("serving %s v%s (%s)", fresh.name, fresh.version, why)
        return True

    def start(self) -> None:
        """Subscribe to the model's events and start the watcher threads."""
        if not self.watch or self.bundle is not None:
            return
        from sluice.infra.subscribe import TemporarySubscription, filter_policy

        self._subscription = TemporarySubscription(
            self.settings, filter_policy(models=[self.name], types=[PROMOTED, ROLLED_BACK]),
            queue_name=f"sluice-serve-{self.name}-{uuid.uuid4().hex[:8]}")
        self._subscription.__enter__()
        for target, name in ((self._listen, "sluice-serve-events"), (self._recheck, "sluice-serve-recheck")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Stop watching and remove the service's queue and subscription."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        if self._subscription is not None:
            try:
                self._subscription.__exit__(None, None, None)
            except Exception:  # the emulator may be gone at shutdown; the queue is then gone with it
                log.warning("could not remove the serving queue %s", self._subscription.queue_name)
            self._subscription = None

    def _listen(self) -> None:
        failing = False
        while not self._stop.is_set():
            try:
                events = self._subscription.receive(wait_s=1)
                failing = False
            except Exception as exc:  # an outage: one line, then keep serving the current model
                if not failing:
                    log.warning("serve: cannot read model events (%s); serving v%s meanwhile", exc,
                                self.model.version if self.model else "-")
                failing = True
                self._stop.wait(2.0)
                continue
            for event in events:
                self._refresh_quietly(f"{event.get('type')} v{event.get('data', {}).get('version')}")

    def _recheck(self) -> None:
        while not self._stop.wait(self.recheck_s):
            self._refresh_quietly("periodic check of the alias")

    def _refresh_quietly(self, why: str) -> None:
        try:
            self.refresh(why)
        except Exception as exc:  # a bad new version never takes the service down: the old one keeps serving
            log.error("serve: could not load %s@%s (%s); still serving v%s", self.name, self.alias, exc,
                      self.model.version if self.model else "-")

    # -- HTTP ------------------------------------------------------------------------------------------------
    def app(self) -> Any:
        """The Starlette application."""
        from starlette.applications import Starlette
        from starlette.concurrency import run_in_threadpool
        from starlette.requests import Request
        from starlette.responses import JSONResponse
        from starlette.routing import Route

        async def predict(request: Request) -> JSONResponse:
            model = self.model  # read once: this request is answered by this version only
            if model is None:
                return JSONResponse({"error": f"no version of {self.name}@{self.alias} is loaded yet"}, 503)
            body = await _bounded_body(request)
            if body is None:  # read no further than the limit: a huge body must not fill the server's memory
                return JSONResponse({"error": f"the body is over {MAX_BODY_BYTES} bytes, the limit; send at most "
                                     f"{MAX_ROWS} rows per request, in several requests"}, 413)
            try:
                # Parsing up to 16 MiB and scoring up to 10,000 rows take CPU time: in a worker thread, so the event
                # loop keeps answering /health, /ready and other requests meanwhile (a probe that times out behind
                # a large request would have the orchestrator restart a healthy server).
                doc = await run_in_threadpool(json.loads, body)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                return JSONResponse({"error": f"the body is not JSON: {exc}",
                                     "expected": '{"rows": [{"column": value, ...}, ...]}'}, 400)
            except RecursionError:
                return JSONResponse({"error": "the body nests arrays or objects deeper than Python's JSON reader "
                                     "goes; rows are one level of objects",
                                     "expected": '{"rows": [{"column": value, ...}, ...]}'}, 400)
            rows = doc.get("rows") if isinstance(doc, dict) and "rows" in doc else doc
            if isinstance(rows, dict):
                rows = [rows]
            if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
                return JSONResponse({"error": "expected a non-empty list of row objects",
                                     "expected": '{"rows": [{"column": value, ...}, ...]}'}, 400)
            if len(rows) > MAX_ROWS:
                return JSONResponse({"error": f"{len(rows)} rows; the limit is {MAX_ROWS} per request"}, 413)
            try:
                result = await run_in_threadpool(model.predict, rows)
            except SluiceError as exc:
                return JSONResponse({"error": str(exc)}, 422)
            payload = {**result.describe(), "predictions": result.to_dicts(),
                       "scored": len(result.scored), "unscored": result.rows - len(result.scored)}
            if not len(result.scored):
                payload["error"] = "no row could be scored; each prediction says why"
                return JSONResponse(payload, 422)
            return JSONResponse(payload)

        async def health(request: Request) -> JSONResponse:
            return JSONResponse({"status": "ok"})

        async def ready(request: Request) -> JSONResponse:
            model = self.model
            if model is None:
                return JSONResponse({"ready": False}, 503)
            return JSONResponse({"ready": True, "model": model.name, "version": model.version})

        async def info(request: Request) -> JSONResponse:
            model = self.model
            if model is None:
                return JSONResponse({"error": "no model loaded"}, 503)
            return JSONResponse({"model": model.name, "alias": self.alias, "version": model.version,
                                 "model_sha256": model.model_sha256, "bundle_sha256": model.bundle_sha256,
                                 "task": model.task, "classes": model.classes, "signature": model.signature,
                                 "swaps": self.swaps[-20:]})

        return Starlette(routes=[Route("/predict", predict, methods=["POST"]), Route("/health", health),
                                 Route("/ready", ready), Route("/model", info)])


async def _bounded_body(request: Any) -> bytes | None:
    """The request's body, or None as soon as it is known to be over MAX_BODY_BYTES (declared or streamed)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def serve(name: str, alias: str, host: str, port: int, settings: Settings | None = None,
          bundle: str | None = None, app: Any = None, on_ready: Callable[[Model], None] | None = None) -> None:
    """Run the service until interrupted; `on_ready` is told the model once it is loaded (a model that cannot be
    loaded raises before it is called)."""
    import signal
    import threading

    import uvicorn

    server = ModelServer(name, alias, settings=settings, bundle=bundle, app=app)
    server.refresh()
    server.start()
    if on_ready is not None and server.model is not None:
        on_ready(server.model)
    if threading.current_thread() is threading.main_thread():
        # uvicorn shuts down gracefully on SIGTERM, then restores the handler it found and raises the signal again:
        # with Python's default, the process died there and the `finally` below never removed the service's queue
        # and subscription (one more left on the topic at each restart). Exiting as an exception runs it.
        def exit_on_term(signum: int, frame: object) -> None:
            raise SystemExit(128 + signum)

        signal.signal(signal.SIGTERM, exit_on_term)
    try:
        uvicorn.run(server.app(), host=host, port=port, log_level="warning", access_log=False)
    finally:
        server.stop()
