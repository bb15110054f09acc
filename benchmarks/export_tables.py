"""Export eight offline tables from statsmodels and vega_datasets for `--extra DIR` of the quality benchmarks.

Sluice does not depend on either package, so this runs in a virtualenv of its own:

    python3 -m venv /tmp/dsvenv && /tmp/dsvenv/bin/pip install statsmodels vega_datasets pyarrow pandas
    /tmp/dsvenv/bin/python benchmarks/export_tables.py DIR
    .venv/bin/python benchmarks/model_quality.py --extra DIR --datasets cars_mpg cars_origin ...

DIR gets NAME.parquet for each table and datasets.json ({"NAME": {"target": ..., "task": ...}}). Both packages ship
these tables in their wheels: nothing is downloaded. What each table brings that the six of quality_data.py do not:
cars (nulls, a date, text), seattle weather (a date, imbalanced classes), fair and modechoice (binary targets of
social-science surveys), anes96 (7 ordered classes), randhie (20,190 rows of a noisy count), star98 (303 rows, a
proportion, many interaction columns).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import statsmodels.api as sm
from vega_datasets import local_data


def tables() -> dict[str, tuple[pd.DataFrame, str, str]]:
    cars = local_data.cars().drop(columns=["Name"])  # the car's name: an identifier
    fair = sm.datasets.fair.load_pandas().data
    fair["affair"] = (fair.pop("affairs") > 0).map({True: "yes", False: "no"})
    anes = sm.datasets.anes96.load_pandas().data
    anes["PID"] = anes["PID"].astype(int)
    star = sm.datasets.star98.load_pandas().data
    star["above"] = star["NABOVE"] / (star["NABOVE"] + star["NBELOW"])  # statsmodels' own endog, a proportion
    star = star.drop(columns=["NABOVE", "NBELOW"])  # the target is a function of these two: a leak
    mode = sm.datasets.modechoice.load_pandas().data.drop(columns=["individual"])
    mode["choice"] = mode["choice"].map({1.0: "yes", 0.0: "no"})
    mode["mode"] = mode["mode"].astype(int)
    return {
        "cars_mpg": (cars.dropna(subset=["Miles_per_Gallon"]), "Miles_per_Gallon", "regression"),
        "cars_origin": (cars, "Origin", "multiclass"),
        "seattle_weather": (local_data.seattle_weather(), "weather", "multiclass"),
        "fair": (fair, "affair", "binary"),
        "anes96_pid": (anes, "PID", "multiclass"),
        "randhie": (sm.datasets.randhie.load_pandas().data, "mdvis", "regression"),
        "star98": (star, "above", "regression"),
        "modechoice": (mode, "choice", "binary"),
    }


def main() -> None:
    folder = Path(sys.argv[1])
    folder.mkdir(parents=True, exist_ok=True)
    meta = {}
    for name, (frame, target, task) in tables().items():
        for column in frame.columns:  # parquet of microsecond datetimes that polars reads as dates where whole
            if str(frame[column].dtype).startswith("datetime"):
                frame[column] = frame[column].astype("datetime64[ms]")
        frame.reset_index(drop=True).to_parquet(folder / f"{name}.parquet", index=False)
        meta[name] = {"target": target, "task": task}
        print(f"{name}: {len(frame):,} rows, target {target} ({task})")
    (folder / "datasets.json").write_text(json.dumps(meta, indent=1))


if __name__ == "__main__":
    main()
