"""The public app object: registration (stages, blueprints, extensions), finding the app, handlers' results."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import sluice
from sluice import App, Blueprint, NewObject
from sluice.core.errors import AppError
from sluice.project import app_spec, load_app

ROOT = Path(__file__).resolve().parents[1]


def _noop(event: Any, ctx: Any) -> list[Any]:
    return []


def test_a_stage_is_named_after_its_function_and_routed() -> None:
    app = App("shop")

    @app.on_object_created(prefix="exports/", suffix=".csv", time_limit_s=30)
    def export(event: Any, ctx: Any) -> None:
        return None

    assert [(r.name, r.prefix, r.suffix, r.options) for r in app.routes] == [
        ("export", "exports/", ".csv", {"time_limit_s": 30})]
    assert app.handlers["export"] is export
    assert [r.name for r in app.match("exports/a.csv")] == ["export"]
    assert app.match("exports/a.json") == []


def test_the_builtin_chain_is_a_blueprint_included_like_any_other() -> None:
    app = App("shop")
    app.include(sluice.builtin)
    app.on_object_created(prefix="exports/")(_noop)
    assert [r.name for r in app.routes] == ["validate", "labels", "features", "train", "train-labels", "backtest",
                                            "benchmark", "register", "_noop"]
    with pytest.raises(AppError, match="included twice"):
        app.include(sluice.builtin)


@pytest.mark.parametrize(("register", "message"), [
    (lambda a: a.on_object_created("x", prefix="exports/", retries=3), r"unknown options \['retries'\]; known: "),
    (lambda a: a.on_object_created(prefix="incoming/shop/")(_noop), "overlaps stage 'validate'.*pick a prefix"),
    (lambda a: a.on_object_created("validate", prefix="exports/"), "stage 'validate' is registered twice"),
    (lambda a: a.on_object_created("x", prefix=""), "a prefix is needed"),
    (lambda a: a.on_object_created("bad name", prefix="exports/"), "use letters, digits"),
    (lambda a: a.include(object()), "expects a sluice Blueprint"),
])
def test_registration_mistakes_fail_at_registration_with_a_clear_message(register: Any, message: str) -> None:
    app = App().include(sluice.builtin)
    with pytest.raises(AppError, match=message):
        register(app)


def test_a_blueprint_defers_its_registrations_and_they_are_checked_when_included() -> None:
    bp = Blueprint("mine")
    bp.on_object_created(prefix="validated/")(_noop)  # overlaps the built-in features stage
    with pytest.raises(AppError, match="unknown options"):
        bp.on_object_created(prefix="x/", nope=1)
    App().include(bp)  # alone it is fine
    with pytest.raises(AppError, match="overlaps stage 'features'"):
        App().include(sluice.builtin).include(bp)


def test_the_app_is_found_from_the_flag_the_environment_or_pyproject(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "shopapp.py").write_text(textwrap.dedent("""
        import sluice
        app = sluice.App("shop")
        app.include(sluice.builtin)
        other = sluice.App("other")
        not_an_app = 42
    """))
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "shop"\n[tool.sluice]\napp = "shopapp:app"\n')
    sub = tmp_path / "sub"
    sub.mkdir()
    monkeypatch.delenv("SLUICE_APP", raising=False)
    assert app_spec(None, sub) == ("shopapp:app", f"{tmp_path / 'pyproject.toml'} [tool.sluice] app")
    assert load_app(None, tmp_path).name == "shop"
    monkeypatch.setenv("SLUICE_APP", "shopapp:other")
    assert load_app(None, tmp_path).name == "other"
    assert load_app("shopapp:app", tmp_path).name == "shop"
    for spec, message in [("shopapp", "not of the form module:attribute"), ("nosuch:app", "no module 'nosuch'"),
                          ("shopapp:missing", "has no attribute 'missing'"),
                          ("shopapp:not_an_app", "not a sluice.App")]:
        with pytest.raises(AppError, match=message):
            load_app(spec, tmp_path)
    monkeypatch.delenv("SLUICE_APP")
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "shop"\n')
    assert load_app(None, tmp_path).routes[0].name == "validate"  # the built-in chain


def test_importing_sluice_stays_light() -> None:
    code = ("import sys, sluice; from sluice import App, Blueprint, NewObject; "
            "print(json.dumps([m for m in ('polars', 'pandera', 'flaml', 'boto3', 'dramatiq') if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


@pytest.fixture
def shop_runtime() -> Iterator[Any]:
    """A runtime on moto in-process, running an app with a stage of its own beside the built-in chain."""
    from sluice.testing import local_runtime

    app = App("shop").include(sluice.builtin)

    @app.on_object_created(prefix="exports/", suffix=".json")
    def summarize(event: Any, ctx: Any) -> list[Any]:
        doc = ctx.store.get_json(event.key)
        return [NewObject(f"summaries/{doc['name']}.json", {"rows": len(doc["rows"])}),
                NewObject(f"summaries/{doc['name']}.txt", f"{len(doc['rows'])} rows")]

    @app.on_object_created(prefix="odd/")
    def odd(event: Any, ctx: Any) -> Any:
        return {"not": "an effect"}

    with local_runtime(app, bucket="sluice-unit") as rt:
        yield rt


def _run(rt: Any, stage: str, key: str) -> dict[str, Any]:
    result: dict[str, Any] = rt.run(stage, key)
    return result


def test_new_objects_a_handler_returns_are_written_and_recorded(shop_runtime: Any) -> None:
    rt = shop_runtime
    rt.store.put("exports/day1.json", json.dumps({"name": "day1", "rows": [1, 2, 3]}).encode())
    result = _run(rt, "summarize", "exports/day1.json")
    assert result["outputs"] == ["summaries/day1.json", "summaries/day1.txt"]
    with pytest.raises(KeyError, match=r"no stage 'summarise' in this app; its stages: .*summarize"):
        _run(rt, "summarise", "exports/day1.json")  # a bare KeyError: 'summarise' before
    assert rt.store.get_json("summaries/day1.json") == {"rows": 3}
    assert rt.store.get("summaries/day1.txt") == b"3 rows"
    assert _run(rt, "summarize", "exports/day1.json") == result  # a duplicate: already done


def test_a_result_that_is_not_an_effect_is_an_error_not_dropped(shop_runtime: Any) -> None:
    rt = shop_runtime
    rt.store.put("odd/x", b"x")
    with pytest.raises(AppError, match=r"stage 'odd' returned a builtins.dict; a handler returns None, or a list of "
                                       r"model events .* and new objects"):
        _run(rt, "odd", "odd/x")
    assert list(rt.store.keys("summaries/")) == []
