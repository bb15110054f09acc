"""`sluice new PROJECT`: a small project with an app of its own beside the built-in chain.

The files are written from the templates below, with the project's name put in; nothing else varies, so the same
name always gives the same bytes (examples/custom-stage is this output, and a test regenerates it).
"""

from __future__ import annotations

import re
from pathlib import Path

NAME = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")

APP = '''"""__PROJECT__: the built-in Sluice chain, plus a stage and a check of our own.

    sluice up --app app:app          # provisions one bucket notification per stage, ours included
    sluice worker --app app:app      # runs them all (pyproject.toml's [tool.sluice] app makes --app optional)
"""

from __future__ import annotations

import io

import polars as pl

import sluice
from sluice import App, NewObject
from sluice.core.context import Context
from sluice.core.errors import UnreadableFile
from sluice.events.s3 import ObjectCreated

app = App("__PROJECT__")
app.include(sluice.builtin)  # validate, features, train, benchmark, register: woken by incoming/<dataset>/...


@app.on_object_created(prefix="exports/", suffix=".jsonl")
def export_to_csv(event: ObjectCreated, ctx: Context) -> list[NewObject]:
    """A partner system writes JSON lines to exports/<dataset>/; each file becomes a CSV under incoming/<dataset>/,
    which the built-in chain then validates, trains on and promotes."""
    _, dataset, name = event.key.split("/", 2)
    try:
        frame = pl.read_ndjson(io.BytesIO(ctx.store.get(event.key, event.version_id)))
    except pl.exceptions.PolarsError as exc:  # bad input: quarantined with this message, never retried
        raise UnreadableFile(f"{event.key}: not JSON lines ({exc})", hint="Fix the export and write it again.") from exc
    out = io.BytesIO()
    frame.write_csv(out)
    # Returned, not written: the runtime writes it (recorded as this stage's output, so a redelivery is a no-op).
    return [NewObject(f"incoming/{dataset}/{name.removesuffix('.jsonl')}.csv", out.getvalue())]


@app.check()
def positive(col: pl.Expr) -> pl.Expr:
    """Strictly above zero (a contract's `min` is inclusive). In contract.yaml: `checks: [positive]`."""
    return col > 0
'''

CONTRACT = '''# The dataset our exports feed: five columns of the bundled breast-cancer sample
# (sluice/data/breast_cancer.csv).
# `sluice contract put contract.yaml --app app:app` checks it against the app (the `positive` check) and uploads it.
dataset: cancer
target: diagnosis
task: binary
metric: roc_auc
extra_columns: drop
columns:
  mean_radius: {dtype: float, nullable: false, min: 0, max: 60, checks: [positive]}
  mean_texture: {dtype: float, nullable: false, min: 0, max: 80}
  mean_area: {dtype: float, nullable: false, min: 0, max: 5000, checks: [positive]}
  mean_smoothness: {dtype: float, nullable: false, min: 0, max: 1}
  diagnosis: {dtype: str, categories: [benign, malignant]}
training: {time_budget_s: 10, debounce_s: 5}
'''

TEST = '''"""The project's own stage and check on moto in-process (no AWS account, no broker): `pytest`."""

from __future__ import annotations

import io
from importlib import resources
from pathlib import Path

import polars as pl
import pytest
from app import app

from sluice.testing import local_runtime

CONTRACT = Path(__file__).resolve().parents[1] / "contract.yaml"


def export(rows: pl.DataFrame) -> bytes:
    """Rows as the partner system writes them: JSON lines."""
    out = io.BytesIO()
    rows.write_ndjson(out)
    return out.getvalue()


@pytest.fixture
def sample() -> pl.DataFrame:
    return pl.read_csv(resources.files("sluice").joinpath("data/breast_cancer.csv").read_bytes())


def test_an_export_becomes_a_drop_that_the_builtin_chain_validates(sample: pl.DataFrame) -> None:
    with local_runtime(app) as rt:
        rt.store.put("contracts/cancer.yaml", CONTRACT.read_bytes())
        rt.store.put("exports/cancer/day1.jsonl", export(sample))
        assert rt.run("export_to_csv", "exports/cancer/day1.jsonl")["outputs"] == ["incoming/cancer/day1.csv"]
        assert rt.run("validate", "incoming/cancer/day1.csv")["outcome"] == "done"
        [manifest] = [k for k in rt.store.keys("validated/cancer/") if k.endswith("manifest.json")]
        assert rt.store.get_json(manifest)["rows"] == sample.height


def test_a_row_that_breaks_our_check_is_quarantined_by_name(sample: pl.DataFrame) -> None:
    bad = sample.with_columns(pl.when(pl.int_range(pl.len()) == 2).then(0.0).otherwise(pl.col("mean_area"))
                              .alias("mean_area"))
    with local_runtime(app) as rt:
        rt.store.put("contracts/cancer.yaml", CONTRACT.read_bytes())
        rt.store.put("exports/cancer/day2.jsonl", export(bad))
        rt.run("export_to_csv", "exports/cancer/day2.jsonl")
        result = rt.run("validate", "incoming/cancer/day2.csv")
        assert result["outcome"] == "quarantined"
        [failure] = rt.store.get_json(result["report"])["summary"]
        assert (failure["column"], failure["check"], failure["example_row"]) == ("mean_area", "positive", 3)


def test_bad_json_lines_are_quarantined_not_retried() -> None:
    with local_runtime(app) as rt:
        rt.store.put("exports/cancer/broken.jsonl", b"{not json\\n")
        result = rt.run("export_to_csv", "exports/cancer/broken.jsonl")
        assert result["outcome"] == "quarantined"
        assert "not JSON lines" in rt.store.get_json(result["report"])["message"]
'''

PYPROJECT = '''[project]
name = "__PROJECT__"
version = "0.1.0"
requires-python = ">=3.11"
dependencies = ["sluice"]

[project.optional-dependencies]
test = ["pytest"]

[tool.sluice]
# What `sluice up` and `sluice worker` run when --app is not given (SLUICE_APP overrides it).
app = "app:app"

[tool.pytest.ini_options]
pythonpath = ["."]
testpaths = ["tests"]
'''

README = '''# __PROJECT__

A Sluice project: the built-in chain (validate, features, train, benchmark, register) plus one stage and one
check of our own, both in `app.py`. Made by `sluice new __PROJECT__`.

- `app.py`: the app. `app.include(sluice.builtin)`, the stage `export_to_csv` (JSON lines under
  `exports/<dataset>/` become a CSV under `incoming/<dataset>/`, which the chain picks up) and the check `positive`.
- `contract.yaml`: the dataset's contract; its columns name the check (`checks: [positive]`).
- `tests/test_app.py`: the stage and the check on moto in-process (`sluice.testing.local_runtime`): `pytest`.
- `pyproject.toml`: `[tool.sluice] app = "app:app"`, what `sluice up` and `sluice worker` run here.

## Run it under LocalStack

```
pytest                                       # the stage and the check, on moto, in a second or two
export AWS_ENDPOINT_URL=http://127.0.0.1:4566   # LocalStack on the host (`make localstack-up` in Sluice)
export SLUICE_SIGNING_KEY=$(python -c 'import secrets; print(secrets.token_hex(32))')
sluice up --app app:app                      # bucket, queues, topic, a notification per stage (ours too)
sluice worker --app app:app &                # our stage and the built-in chain, on Redis
sluice contract put contract.yaml --app app:app
sluice events tail &
python -c "import polars as pl, importlib.resources as r; \\
  pl.read_csv(r.files('sluice') / 'data/breast_cancer.csv').write_ndjson('day1.jsonl')"
aws --endpoint-url $AWS_ENDPOINT_URL s3 cp day1.jsonl s3://sluice/exports/cancer/day1.jsonl
sluice status                                # exports -> incoming -> validated -> ... -> a promoted model
```

## Adding a stage

A stage is a function `(event, ctx)` registered with `@app.on_object_created(prefix=..., suffix=...)`: `event.key`
is the object that woke it, `ctx.store` reads the bucket. It returns what should happen next: `NewObject(key,
body)` to write an object (which wakes the stage whose prefix matches it) and model events to publish; `None` or
`[]` when there is nothing to do. Raise `sluice.core.errors.InputError` (or one of its kinds) for bad input: it
is quarantined with your message and never retried; any other exception is retried, then dead-lettered.
'''

FILES = {"app.py": APP, "contract.yaml": CONTRACT, "tests/test_app.py": TEST, "pyproject.toml": PYPROJECT,
         "README.md": README}


def render(project: str) -> dict[str, str]:
    """The project's files: relative path -> text."""
    if not NAME.match(project):
        raise ValueError(f"{project!r}: a project name is lowercase letters, digits, '-' and '_', starting with a "
                         "letter")
    return {path: text.replace("__PROJECT__", project) for path, text in FILES.items()}


def write(project: str, folder: Path) -> list[Path]:
    """Write the project into `folder` (made if missing; an existing file is never overwritten)."""
    files = render(project)
    existing = [p for p in files if (folder / p).exists()]
    if existing:
        raise FileExistsError(f"{folder}: {', '.join(existing)} already exist; nothing was written")
    written = []
    for path, text in files.items():
        target = folder / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        written.append(target)
    return written
