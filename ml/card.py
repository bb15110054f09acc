"""Model cards: one markdown page per registry version, rendered from its immutable version document."""

from __future__ import annotations

import json
from typing import Any


def _f(v: Any, digits: int = 4) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _ci(pair: list[Any] | None) -> str:
    return "n/a" if not pair or None in pair else f"[{pair[0]:.4f}, {pair[1]:.4f}]"


def _leakage(leakage: dict[str, Any] | None) -> list[str]:
    if not leakage or not leakage.get("findings"):
        return ["No column alone predicts the target almost perfectly (checked out of fold before training)."]
    out = [f"**Possible leak** in {', '.join(f'`{c}`' for c in leakage['columns'])}: "
           f"policy `{leakage['policy']}`, {leakage['action']}.", ""]
    out += [f"- `{f['column']}` ({f['kind']}, {f['measure']} {f['score']:.3f}): {f['message']}"
            for f in leakage["findings"]]
    return out


def render_card(version: dict[str, Any], previous: dict[str, Any] | None = None) -> str:
    """The card of `version`; `previous` is the champion it was compared with, if any."""
    model, n = version["model"], version["version"]
    gate = version.get("gate") or {}
    metric = gate.get("metric") or {}
    diff = metric.get("difference") or {}
    lineage, training = version["lineage"], version.get("training") or {}
    bench = version.get("benchmark") or {}
    conf = f"{diff.get('confidence', 0.95):.0%}"
    out = [
        f"# Model card: {model} v{n}",
        "",
        f"Registered {version['registered_at']} from run `{version['run_id']}` of dataset `{version['dataset']}`. "
        f"Gate decision: **{version['decision']}**. Its lifecycle since then: `sluice models history {model}`.",
        "",
        "## Data",
        "",
        f"- Feature set: `{lineage['feature_set_version']}`; contract version `{lineage['contract_version'][:12]}`",
        "- Data versions (sha256 of the dropped bytes):",
        *[f"  - `{dv}`" for dv in lineage["data_versions"]],
    ]
    holdout = training.get("holdout") or {}
    if holdout:
        out.append(f"- Rows: {holdout.get('train_rows')} for training, {holdout.get('rows')} held out "
                   f"(fraction {holdout.get('fraction')}, seed {holdout.get('seed')}; a row's side depends only on "
                   "its content)")
    out += ["", "## Training", ""]
    if training:
        params = training.get("params") or {}
        out += [f"- FLAML over {', '.join(params.get('estimators', []))}, budget {params.get('time_budget_s')} s, "
                f"seed {params.get('seed')}, n_jobs {params.get('n_jobs')}; best estimator "
                f"`{training.get('best_estimator')}`, fit {(training.get('durations_s') or {}).get('fit')} s",
                f"- Best configuration: `{json.dumps(training.get('best_config'), sort_keys=True)}`",
                *_blend(training.get("blend")),
                *([f"- Shipped model: the same configuration refitted on all {training['refit']['rows']} labelled rows "
                   "(training + holdout)" + _bag(training["refit"]) + "; the metrics below are of the model fitted "
                   "on the training rows alone, scored on holdout rows it never saw"] if training.get("refit") else []),
                *([f"- Not refitted: {training['refit_skipped']}"] if training.get("refit_skipped") else []),
                f"- Environment: Python {(training.get('environment') or {}).get('python')}, "
                + ", ".join(f"{k} {v}" for k, v in sorted(((training.get('environment') or {})
                                                         .get('packages') or {}).items()))]
    else:
        out.append("- (not recorded)")
    out += ["", "## Leakage checks", "", *_leakage(version.get("leakage"))]
    out += ["", f"## Metrics (holdout, {conf} paired-bootstrap intervals)", ""]
    if metric:
        out += ["| | " + metric["name"] + f" | {conf} CI |", "|---|---|---|",
                f"| candidate v{n} | {_f(metric.get('candidate'))} | {_ci(diff.get('candidate_ci'))} |",
                f"| {gate.get('reference')} | {_f(metric.get('reference'))} | {_ci(diff.get('reference_ci'))} |",
                f"| improvement | {_f(diff.get('estimate'), 4)} | {_ci([diff.get('low'), diff.get('high')])} |",
                *([f"| naive baseline | {_f(metric.get('baseline'))} | |"]
                  if gate.get("reference") != "naive baseline" else []),  # else it is the reference row above
                "", f"On {metric.get('holdout_rows')} holdout rows, {diff.get('resamples')} paired resamples. "
                "Improvement is in the metric's good direction."]
        if gate.get("guardrails"):
            out += ["", "Guardrails:", "", "| metric | candidate | reference | ok |", "|---|---|---|---|"]
            out += [f"| {g['metric']} | {_f(g['candidate'])} | {_f(g['reference'])} | {'yes' if g['ok'] else 'NO'} |"
                    for g in gate["guardrails"]]
    else:
        out.append(f"- {version['metric']}: {version.get('scores')}")
    out += ["", "## Slices", ""]
    if gate.get("slices"):
        out += ["| slice | rows | candidate | reference | improvement | status |", "|---|---|---|---|---|---|"]
        out += [f"| {s['slice']} | {s['rows']} | {_f(s.get('candidate'))} | {_f(s.get('reference'))} | "
                f"{_f(s.get('improvement'))} | {s['status']} |" for s in gate["slices"]]
        out.append(f"\nNon-inferiority margin: {gate['policy'].get('non_inferiority_margin')}.")
    else:
        out.append("No slices configured (`promotion.slices` in the contract).")
    out += ["", "## Comparison with the previous champion", ""]
    if previous is None:
        out.append("First version of the model: compared with the naive baseline (class priors, or the mean).")
    else:
        pb = previous.get("benchmark") or {}
        out += [f"Compared with champion v{previous['version']} (run `{previous['run_id']}`, registered "
                f"{previous['registered_at']}) on the same holdout rows:", "",
                "| | candidate | champion |", "|---|---|---|",
                f"| {version['metric']} | {_f(metric.get('candidate'))} | {_f(metric.get('reference'))} |",
                f"| size (bytes) | {bench.get('size_bytes', 'n/a')} | {pb.get('size_bytes', 'n/a')} |",
                f"| p99 single-row latency (ms) | {_f(bench.get('p99_ms'), 3)} | {_f(pb.get('p99_ms'), 3)} |",
                f"| data versions | {len(lineage['data_versions'])} | {len(previous['lineage']['data_versions'])} |"]
    out += ["", "## Gate decision", "", *[f"- {r}" for r in version.get("reasons", [])]]
    policy = gate.get("policy")
    if policy:
        out += ["", f"Policy: `{json.dumps(policy, sort_keys=True)}`"]
    out += ["", "## Inference benchmark", ""]
    if bench:
        out += [f"- Batch: {bench['rows_per_s']:,.0f} rows/s ({bench['batch_rows']} rows)",
                f"- Single-row predict: p50 {bench['p50_ms']:.3f} ms, p99 {bench['p99_ms']:.3f} ms "
                f"({bench['single_row_samples']} calls)",
                f"- Size: {bench['size_bytes']:,} bytes; load {bench['load_ms']:.1f} ms "
                f"(measured on {bench.get('machine')}, Python {bench.get('python')})"]
    else:
        out.append("- (not measured)")
    art = version["artifact"]
    out += ["", "## Lineage", "",
            f"- Artifact: `{art['uri']}` ({art['format']}), sha256 `{art['sha256']}`",
            f"- Run: `{lineage['run_id']}`",
            "- Sources:",
            *[f"  - `{s['key']}` version `{s.get('version_id')}`, sha256 `{s['sha256']}`, {s.get('size')} bytes"
              for s in lineage["sources"]], ""]
    return "\n".join(out)


def _blend(record: dict[str, Any] | None) -> list[str]:
    """The blend line: what ships, its weights and the holdout evidence, or why the single model ships."""
    if not record:
        return []
    holdout = record.get("holdout") or {}
    scores = ", ".join(f"{k} {_f(v)}" for k, v in holdout.items())
    if record.get("kept"):
        weights = ", ".join(f"{k} {w:g}" for k, w in (record.get("weights") or {}).items() if w)
        return [f"- Shipped model: a blend of {weights} (weights chosen on out-of-fold predictions of the training "
                f"rows; holdout {scores}: {record.get('reason')})"]
    return [f"- Blend of {', '.join(record.get('members') or [])} not shipped: {record.get('reason')}"
            + (f" (holdout {scores})" if scores else "")]


def _bag(refit: dict[str, Any]) -> str:
    """How a bagged refit was fitted (ml/modeling.BAG_FOLDS), or nothing."""
    bag = refit.get("bag")
    return (f", as a bag: each member fitted {bag['folds']} times, each time on all rows but one of "
            f"{bag['folds']} folds (seed {bag['seed']}), the fits' predictions averaged") if bag else ""
