"""Finding the user's app: `--app module:attribute`, else SLUICE_APP, else `[tool.sluice] app` in pyproject.toml,
else the built-in chain alone.

The app is the user's own code, imported from their project folder like any Python module (the current directory
is put first on `sys.path`, as uvicorn and chalice do). Nothing is ever imported from the bucket.
"""

from __future__ import annotations

import importlib
import os
import sys
import tomllib
from pathlib import Path

from sluice.core.app import App
from sluice.core.errors import AppError
from sluice.core.settings import ENV_APP


def app_spec(explicit: str | None = None, cwd: Path | None = None) -> tuple[str | None, str]:
    """Which app to load and where that was said: (spec or None for the built-in chain, source)."""
    if explicit:
        return explicit, "--app"
    if os.environ.get(ENV_APP):
        return os.environ[ENV_APP], ENV_APP
    for folder in [(cwd or Path.cwd()).resolve(), *(cwd or Path.cwd()).resolve().parents]:
        pyproject = folder / "pyproject.toml"
        if pyproject.is_file():
            try:
                doc = tomllib.loads(pyproject.read_text())
            except tomllib.TOMLDecodeError as exc:
                raise AppError(f"{pyproject}: not valid TOML ({exc})") from exc
            spec = doc.get("tool", {}).get("sluice", {}).get("app")
            if spec:
                return str(spec), f"{pyproject} [tool.sluice] app"
            break  # the nearest pyproject.toml is the project's
    return None, "default"


def load_app(explicit: str | None = None, cwd: Path | None = None) -> App:
    """The app to run (see the module docstring); a clear error when it cannot be found."""
    spec, source = app_spec(explicit, cwd)
    if spec is None:
        from sluice.handlers import build_pipeline

        return build_pipeline()
    return import_app(spec, source, cwd)


def import_app(spec: str, source: str = "--app", cwd: Path | None = None) -> App:
    """Import `module:attribute` (the attribute may also be a function returning the app)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise AppError(f"{source}: {spec!r} is not of the form module:attribute (e.g. app:app)")
    folder = str((cwd or Path.cwd()).resolve())
    if folder not in sys.path:
        sys.path.insert(0, folder)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise AppError(f"{source}: no module {module_name!r} in {folder} or on the Python path "
                           "(run from the project folder, or install it)") from exc
        raise
    try:
        app = getattr(module, attr)
    except AttributeError:
        raise AppError(f"{source}: module {module_name!r} ({module.__file__}) has no attribute {attr!r}") from None
    if callable(app) and not isinstance(app, App):
        app = app()
    if not isinstance(app, App):
        raise AppError(f"{source}: {spec} is a {type(app).__name__}, not a sluice.App")
    return app
