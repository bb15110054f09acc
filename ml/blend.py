"""A blend of the search's best model per learner: a weighted average of their predictions, stored without pickle.

The stored form is a JSON document (`sluice-blend-json`) that names its members by their bundle role and sha256
and gives each a weight; every member is a file of its own in the bundle, in its learner's own format (LightGBM
text, the linear JSON of ml/linear.py), so the bundle manifest covers each of them and the document binds them.

How a blend is chosen (`build`), so that nothing it is judged on was used to make it:
- members: the best configuration FLAML found for each blendable learner, fitted again exactly as the search's
  winner is (same rows, same encoding);
- weights: a search over the simplex (steps of 0.05) on out-of-fold predictions of the training rows, scored with
  the contract's metric;
- Occam's window first: the members whose out-of-fold score is not clearly worse than the best member's (by
  more than WINDOW_Z bootstrap standard errors of the paired difference) ship as an even blend, unless the
  weighted blend is clearly better than that even blend (nested, below), or the even blend is clearly worse
  than the best member alone. Why: on a few hundred rows the folds cannot rank good members, and their ranking
  is biased besides. Each fold trains on 80 % of the training rows, the shipped refit on 125 % of them, and
  learners do not gain alike from the extra rows. On wine (114 training rows, 91 a fold; three test splits,
  benchmarks/blend_folds.py) LightGBM's defaults had a mean out-of-fold log loss of 0.092 against the linear
  model's 0.064, yet refitted on all 142 rows they scored 0.056 on the test rows against its 0.064. Picking (or
  weighting) by such folds follows noise and that bias; an even blend of what cannot be told apart scores, for
  a convex loss, no worse than its members' mean, and better when their errors differ. Ten folds instead of
  five did not help (wine 0.056, five folds 0.045, the window 0.039, on one shared search per split); the window
  gave breast cancer 0.9928 ROC AUC (0.9914 without), diabetes 51.72 RMSE (52.16), sales 33.095 (33.090) and
  churn the same choices: where thousands of rows make the differences clear, the window holds one member or
  the weighted blend is clearly better than the even one, and the rules below decide, as before. When the
  window holds two members or more, a member clearly worse alone still joins the even blend if its share does
  not make that blend clearly worse out of fold (`widen`: extra trees beside diabetes's linear members).
- otherwise kept only when the blend beats the best single member on rows that neither fitted: out of fold,
  each fold's rows blended with weights chosen on the other folds (a nested choice, so the weights' own fit is
  not counted in the blend's favour). Otherwise, when one member alone beats the search's winner on the same
  folds, that member ships (a blend of one); if not, the run ships the search's single model, as before. The
  holdout is not used to choose: it stays the gate's, which judges the blend there against the champion and
  the baseline.

Why not decide on the holdout: on these datasets it holds 28 to 90 rows, too few to tell two good models apart.
Measured on breast cancer, wine, digits and diabetes (three test splits each; members linear, LightGBM defaults
and extra trees fitted on the training rows; mean test score): gated on the holdout 0.9875 / 0.0700 / 0.0743 /
52.14, gated out of fold as here 0.9871 / 0.0729 / 0.0677 / 51.53, always the blend 0.9902 / 0.0657 / 0.0677 /
51.53 (ROC AUC, log loss, log loss, RMSE). The holdout gate rejected good blends on digits and diabetes.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

BLEND_JSON = "sluice-blend-json"
FORMAT_VERSION = 1
MEMBER = "member-"  # a member's role in the bundle: member-<learner>
BLENDABLE = ("lgbm", "linear")  # learners whose best configuration refits as a plain scikit-learn model
# Members of fixed configuration besides the search's: LightGBM's library defaults, strong on small tabular data
# where a short search ends on a few tiny trees, and the same with extremely randomised splits (lower variance on a
# few hundred rows; measured on diabetes). Name -> (learner, LightGBM parameters beyond its defaults).
FIXED: dict[str, tuple[str, dict[str, Any]]] = {"lgbm_default": ("lgbm", {}),
                                                "lgbm_extra": ("lgbm", {"extra_trees": True})}
# The searched linear model's twin on rows scaled to one norm (ml/linear.py, `row_norm`), same C or alpha: a second
# linear member whose errors differ from the first's. On diabetes (12 test splits, ridge with alpha chosen by 5-fold
# CV for each) an even blend of the two beat the standardised ridge alone on 11 splits, by 0.59 RMSE on average
# (sd 0.60), while the folds preferred the standardised one alone on 10 of 12 (so neither the search nor picking
# by folds would choose the twin, and picking did worse than never: 53.17 against 53.06). Through `build`, on one
# shared 6 s search per split (6 test splits, what ships refitted on every development row, 2 cores at load 9-12,
# 2026-11-29): diabetes 51.48 RMSE with the twin against 51.93 without (better on 3 splits, by 0.5 to 1.4; worse
# on 2, by 0.1 to 0.25; measured before the twin shared the linear share, which changes only those 2 splits'
# three-member blends), breast cancer 0.9956 ROC AUC against 0.9947 and wine 0.0646 log loss against 0.0642 with
# the twin sharing the linear share (wine 0.0525 against 0.0516, worse on 4 of 6, when it had a share of its own).
# In the whole chain (benchmarks/model_quality.py, 30 s, the same two splits, load 5-13) the twin, sharing the linear
# share, took wine from 0.0345 / 0.0603 log loss to 0.0410 / 0.0670 on identical searched configurations, and
# breast cancer gained nothing clear: the twin is a regression member only.
LINEAR_ROWS = "linear_rows"
LINEAR_ROWS_TASKS = ("regression",)
FOLDS = 5
FEWER_FOLDS = 3  # when five folds would not fit in what is left of the budget
STEP = 0.05
# Occam's window (see `build`): a member is "clearly worse" than another out of fold when the paired difference of
# their metric exceeds WINDOW_Z bootstrap standard errors (one-sided 95 %). The standard error comes from
# BOOTSTRAP resamples of at most BOOTSTRAP_ROWS rows, scaled to the real row count (a mean-like metric's error
# shrinks as 1/sqrt(rows)), so it costs the same on 100,000 rows as on 2,000.
WINDOW = True
WINDOW_Z = 1.64
WIDEN = True  # `widen`: members outside the window join the even blend when their share does not clearly hurt it
BOOTSTRAP = 100
BOOTSTRAP_ROWS = 2000


def role(member: str) -> str:
    """The bundle role of a member."""
    return f"{MEMBER}{member}"


def document(members: list[dict[str, Any]], task: str) -> bytes:
    """The blend document: `members` are {learner, format, role, sha256, weight}, in scoring order."""
    total = sum(float(m["weight"]) for m in members)
    if not members or not np.isclose(total, 1.0):
        raise ValueError(f"a blend needs members whose weights sum to 1 (got {total})")
    return json.dumps({"format": BLEND_JSON, "version": FORMAT_VERSION, "task": task,
                       "members": [{k: m[k] for k in ("learner", "format", "role", "sha256", "weight")}
                                   for m in members]}).encode()


def read_document(data: bytes, member_files: Mapping[str, bytes]) -> list[tuple[dict[str, Any], bytes]]:
    """The members of a blend document with their bytes, each checked against the sha256 the document names."""
    doc = json.loads(data)
    if doc.get("format") != BLEND_JSON or doc.get("version") != FORMAT_VERSION:
        raise ValueError(f"not a {BLEND_JSON} v{FORMAT_VERSION} document")
    out = []
    for m in doc["members"]:
        if m["role"] not in member_files:
            raise ValueError(f"{BLEND_JSON}: member {m['role']!r} is not in the bundle")
        raw = member_files[m["role"]]
        if hashlib.sha256(raw).hexdigest() != m["sha256"]:
            raise ValueError(f"{BLEND_JSON}: member {m['role']!r} does not match the sha256 the blend names")
        out.append((m, raw))
    if not np.isclose(sum(float(m["weight"]) for m, _ in out), 1.0):
        raise ValueError(f"{BLEND_JSON}: member weights do not sum to 1")
    return out


def combine(scores: list[np.ndarray], weights: list[float]) -> np.ndarray:
    """The weighted average of the members' scores (values, P(class 1), or class probabilities)."""
    out = np.zeros_like(np.asarray(scores[0], dtype=np.float64))
    for s, w in zip(scores, weights, strict=True):
        out = out + w * np.asarray(s, dtype=np.float64)
    return out


def simplex(k: int, step: float = STEP) -> list[tuple[float, ...]]:
    """Every weight vector of `k` non-negative weights in multiples of `step` that sum to 1."""
    n = round(1 / step)
    return [tuple(c / n for c in combo) for combo in itertools.product(range(n + 1), repeat=k) if sum(combo) == n]


def choose_weights(oof: list[np.ndarray], y: np.ndarray, metric: str, n_classes: int | None) -> tuple[float, ...]:
    """The simplex point whose blend of out-of-fold scores is best by the contract's metric (ties: the earlier
    point, which puts more weight on the later members; the search's winner is listed first)."""
    from sluice.ml.contract import HIGHER_IS_BETTER
    from sluice.ml.modeling import score

    hib = HIGHER_IS_BETTER[metric]
    best: tuple[float, ...] | None = None
    best_value = float("nan")
    fast = _fast_metric(metric, y, n_classes)
    for w in simplex(len(oof), STEP if len(oof) <= 3 else 0.1 if len(oof) <= 5 else 0.25):
        blended = combine(oof, list(w))
        value = fast(blended) if fast is not None else score(metric, y, blended, n_classes)
        if best is None or (value > best_value if hib else value < best_value):
            best, best_value = w, value
    assert best is not None
    return best


def _fast_metric(metric: str, y: np.ndarray, n_classes: int | None) -> Any:
    """The metric as a few numpy operations (scikit-learn's checks cost milliseconds a call, and the weight search
    makes hundreds of calls); None for a metric without one. Agrees with `modeling.score` (a test holds it)."""
    if metric == "rmse":
        return lambda p: float(np.sqrt(np.mean((y - p) ** 2)))
    if metric == "mae":
        return lambda p: float(np.mean(np.abs(y - p)))
    if metric == "r2":
        total = float(np.sum((y - np.mean(y)) ** 2))
        return (lambda p: 1 - float(np.sum((y - p) ** 2)) / total) if total > 0 else None
    if metric in ("accuracy", "f1"):
        def predicted(p: np.ndarray) -> np.ndarray:  # the argmax, as `modeling.score` takes it (ties: class 0)
            return p.argmax(axis=1) if p.ndim == 2 else (p > 0.5).astype(int)
        if metric == "accuracy":
            return lambda p: float(np.mean(predicted(p) == y))

        def f1(p: np.ndarray) -> float:
            hit = predicted(p) == 1
            tp, fp, fn = int(np.sum(hit & (y == 1))), int(np.sum(hit & (y != 1))), int(np.sum(~hit & (y == 1)))
            return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
        return f1
    if metric == "log_loss":
        def log_loss(p: np.ndarray) -> float:
            proba = p if p.ndim == 2 else np.column_stack([1 - p, p])
            proba = np.clip(proba, 1e-15, 1)
            proba = proba / proba.sum(axis=1, keepdims=True)
            return float(-np.mean(np.log(proba[np.arange(len(y)), y])))
        return log_loss
    if metric == "roc_auc" and (n_classes or 2) == 2 and len(np.unique(y)) == 2:
        from scipy.stats import rankdata

        positives = y == 1
        n_pos, n_neg = int(positives.sum()), int((~positives).sum())

        def auc(p: np.ndarray) -> float:
            ranks = rankdata(p if p.ndim == 1 else p[:, 1])
            return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
        return auc
    return None


def _metric_fn(metric: str, y: np.ndarray, n_classes: int | None) -> Any:
    from sluice.ml.modeling import score

    fast = _fast_metric(metric, y, n_classes)
    return fast if fast is not None else (lambda p: score(metric, y, p, n_classes))


def noise(candidates: list[np.ndarray], y: np.ndarray, metric: str, n_classes: int | None, seed: int
          ) -> tuple[list[float], np.ndarray]:
    """Each candidate's out-of-fold metric as a gain (higher is better), and the bootstrap standard error of the
    paired difference between every two candidates (rows resampled together, so what they share cancels)."""
    from sluice.ml.contract import HIGHER_IS_BETTER

    sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
    full = _metric_fn(metric, y, n_classes)
    gains = [sign * full(c) for c in candidates]
    rng = np.random.default_rng(seed)
    n = len(y)
    m = min(n, BOOTSTRAP_ROWS)
    draws = []
    for _ in range(BOOTSTRAP):
        rows = rng.integers(0, n, m)
        if n_classes is not None and len(np.unique(y[rows])) < 2:
            continue
        fn = _metric_fn(metric, y[rows], n_classes)
        draws.append([sign * fn(c[rows]) for c in candidates])
    d = np.asarray(draws) if draws else np.zeros((1, len(candidates)))
    se = np.std(d[:, :, None] - d[:, None, :], axis=0) * np.sqrt(m / n)
    return gains, se


def clearly_worse(gains: list[float], se: np.ndarray, i: int, j: int) -> bool:
    """Whether candidate `i` is worse than candidate `j` by more than WINDOW_Z standard errors of their difference."""
    return gains[j] - gains[i] > WINDOW_Z * float(se[i, j])


@dataclass
class Blend:
    """What `build` decided: the weights, the evidence, and (when kept) the members fitted on the training rows."""

    learners: list[str]
    weights: list[float]
    kept: bool
    reason: str
    oof: dict[str, float] = field(default_factory=dict)  # metric of each member and of the (nested) blend, out of fold
    holdout: dict[str, float] = field(default_factory=dict)  # the same on the holdout
    seconds: float = 0.0
    folds: int = 0
    fitted: dict[str, Any] = field(default_factory=dict, repr=False)  # member -> fitted scikit-learn model
    dropped: list[str] = field(default_factory=list)  # members left out for lack of time
    costs: dict[str, float] = field(default_factory=dict)  # seconds of each member's fit on all training rows

    def summary(self) -> dict[str, Any]:
        """What the run, the version and the card record."""
        return {"kept": self.kept, "reason": self.reason, "members": self.learners,
                "weights": dict(zip(self.learners, self.weights, strict=True)), "folds": self.folds,
                "out_of_fold": self.oof, "holdout": self.holdout, "seconds": round(self.seconds, 3),
                **({"dropped_for_time": self.dropped} if self.dropped else {})}


def folds(y: np.ndarray, classification: bool, seed: int, n_folds: int = FOLDS
          ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Seeded K-fold splits of the training rows (stratified for classes); fewer folds for a rare class."""
    from sklearn.model_selection import KFold, StratifiedKFold

    if classification:
        smallest = int(np.bincount(y).min()) if len(y) else 0
        k = min(n_folds, smallest)
        if k < 2:
            return []
        return list(StratifiedKFold(k, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))
    return list(KFold(min(n_folds, len(y)), shuffle=True, random_state=seed).split(np.zeros(len(y))))


def predict(model: Any, X: Any, task: str) -> np.ndarray:
    """A fitted scikit-learn model's scores, as Sluice's loaders give them."""
    if task == "regression":
        return np.asarray(model.predict(X), dtype=np.float64)
    proba = np.asarray(model.predict_proba(X), dtype=np.float64)
    return proba[:, 1] if task == "binary" else proba


def learner_of(member: str) -> str:
    """The learner (and so the stored format) of a member: the fixed configurations are LightGBM's, the linear
    model's twin is linear."""
    member = re.sub(r"-bag\d+$", "", member)  # one fit of a bag (ml/modeling.BAG_FOLDS) is its member's learner
    if member == LINEAR_ROWS:
        return "linear"
    return FIXED.get(member, (member, {}))[0]


def linear_rows(template: Any) -> Any | None:
    """The twin of an unfitted linear member on rows scaled to one norm, same penalty (None if it is one already)."""
    from sklearn.base import clone

    return None if template.row_norm else clone(template).set_params(row_norm=True)


def fixed_templates(task: str, n_jobs: int, seed: int) -> dict[str, Any]:
    """The fixed members, unfitted: LightGBM's library defaults, and the same with extremely randomised splits."""
    import lightgbm as lgb

    cls = lgb.LGBMRegressor if task == "regression" else lgb.LGBMClassifier
    return {name: cls(verbose=-1, n_jobs=n_jobs, random_state=seed, **params) for name, (_, params) in FIXED.items()}


def fold_count(n_rows: int) -> int:
    """How many folds the blend chooses on, for `n_rows` training rows: FOLDS at every size (ten folds on small
    data cost twice the fits and chose no better; see the module docstring)."""
    return FOLDS


def plan(costs: dict[str, float], left_s: float, n_folds: int = FOLDS) -> tuple[list[str], int]:
    """Which members and how many folds (`n_folds`, else FOLDS, else FEWER_FOLDS) fit in `left_s`, given each
    member's measured fit time: k folds fit every member k times on (k-1)/k of the rows, the refit on 125 %.
    Drops the costliest members first (never the first, the search's winner); (members, 0) when not even two
    members fit."""
    names = list(costs)
    tries = sorted({k for k in (n_folds, FOLDS, FEWER_FOLDS) if k <= n_folds}, reverse=True)
    while len(names) >= 2:
        per = sum(costs[n] for n in names)
        for k in tries:
            if per * (k - 1 + 1.25) <= left_s:
                return names, k
        names.remove(max(names[1:], key=lambda n: costs[n]))
    return names, 0


def even_weights(members: list[str], near: list[str]) -> list[float]:
    """Equal shares for the `near` members, except that the linear model and its twin on rows scaled to one norm
    (LINEAR_ROWS) split one share: the twin is the same model on another view of the rows, not one more model.
    Given a share of its own it diluted wine's blend of trees (worse on 4 of 6 test splits)."""
    twins = "linear" in near and LINEAR_ROWS in near
    share = 1 / (len(near) - 1 if twins else len(near))
    return [0.0 if n not in near else share / 2 if twins and n in ("linear", LINEAR_ROWS) else share for n in members]


def widen(members: list[str], oof: list[np.ndarray], near: list[str], gains: list[float], y: np.ndarray,
          metric: str, n_classes: int | None, seed: int) -> list[str]:
    """The window's members and, one at a time (best alone first), each member outside it whose share in the even
    blend does not make that blend clearly worse out of fold (WINDOW_Z standard errors of the paired difference).

    Why: the window judges members alone, and alone a member can be clearly worse out of fold yet help the average
    that ships, by errors that differ from the others' and by the rows it has yet to gain from: a fold fits 80 %
    of the training rows, the shipped refit 125 %, and trees gain more from the extra rows than a linear model.
    On diabetes (10 seeded test splits, ridge with alpha chosen by CV, LightGBM's defaults with extra trees, all
    fitted on the development rows) extra trees alone scored 52.15 RMSE on the test rows against the ridge's 52.26,
    yet the window left them out (1 to 3.7 RMSE worse out of fold); an even blend of the ridge, its row-norm twin
    and extra trees beat the two linear members on 9 of 10 splits (50.93 against 51.53; FLAML's `sgd`
    configuration 51.62). Through `build` (benchmarks/blend_folds.py, one shared 6 s search per split, 6 test
    splits, what ships refitted on every development row, 2 cores at load 6-14, 2026-11-29): diabetes 51.08 RMSE
    against 51.33 without (better on 3 splits by 0.5 to 0.85, worse on 1 by 0.57), wine 0.0616 log loss against
    0.0624 (better on 2, the same on 4), breast cancer 0.9950 ROC AUC against 0.9952 (0.9988 against 1.0000 on
    one split, the same on 5). Only when the window already holds two members or more (the rows cannot rank the
    best ones): where one member is clearly best, it still decides. Tried instead, on the same splits: carrying
    each member's learning curve (half-size fits in every fold) on to the refit's rows before the window compared
    members: diabetes 51.87, wine 0.0841 (a half of a wine fold is 46 rows: its curve was mostly noise).
    Adding a member only when it makes the even blend better out of fold (not merely not clearly worse) changed
    nothing on diabetes: out of fold the trees' share always cost a little (55.25 to 55.85 on one split) that
    the test rows did not see (48.21 to 47.70). Widening a window of one member as well (4 splits): wine's split 3,
    where the linear model alone ships (0.025 out of fold, 0.121 on the test rows; the tree members 0.020 to 0.10,
    plain FLAML's LightGBM 0.005), did not
    change (the trees' share was clearly worse out of fold), and breast cancer's split 1 went 0.9872 to 0.9853."""
    order = sorted((n for n in members if n not in near), key=lambda n: -gains[members.index(n)])
    for name in order:
        trial = [n for n in members if n in near or n == name]
        blends = [combine(oof, even_weights(members, near)), combine(oof, even_weights(members, trial))]
        g, se = noise(blends, y, metric, n_classes, seed)
        if not clearly_worse(g, se, 1, 0):
            near = trial
    return near


def _window(members: list[str], oof: list[np.ndarray], crossed: np.ndarray, best_single: str, y: np.ndarray,
            metric: str, n_classes: int | None, seed: int) -> tuple[list[str], list[float] | None, bool, list[str]]:
    """Occam's window: the members not clearly worse out of fold than the best alone (and those `widen` let join
    them); their even weights (None when fewer than two, or when the even blend is itself clearly worse than the
    best alone); whether the nested weighted blend (`crossed`) is clearly better than the even one; and the
    members `widen` let join."""
    gains, se = noise(oof, y, metric, n_classes, seed)
    b = members.index(best_single)
    near = [n for i, n in enumerate(members) if not clearly_worse(gains, se, i, b)]
    alone = near
    if WIDEN and len(near) >= 2:
        near = widen(members, oof, near, gains, y, metric, n_classes, seed)
    joined = [n for n in near if n not in alone]
    if len(near) < 2:
        return near, None, False, joined
    even = even_weights(members, near)
    gains, se = noise([oof[b], combine(oof, even), crossed], y, metric, n_classes, seed)
    if clearly_worse(gains, se, 1, 0):
        return near, None, False, joined
    return near, even, clearly_worse(gains, se, 1, 2), joined


def build(templates: dict[str, Any], X: Any, y: np.ndarray, X_holdout: Any, y_holdout: np.ndarray, *,
          task: str, metric: str, n_classes: int | None, seed: int, left_s: float = float("inf"),
          first_is_winner: bool = True) -> Blend:
    """Members fitted on (X, y); weights from their out-of-fold scores on (X, y); kept if better on the holdout.

    `templates` are unfitted scikit-learn models, the search's winner first (`first_is_winner`; when the winner
    is not among them, e.g. xgboost, no member alone replaces it, since it was not compared). Every member is
    fitted once on (X, y) first, which measures what it costs; the members and folds then fit what is left of
    `left_s`."""
    from sklearn.base import clone

    from sluice.ml.contract import HIGHER_IS_BETTER
    from sluice.ml.modeling import better, score

    started = time.perf_counter()
    learners = list(templates)
    fitted, costs = {}, {}
    for name in learners:
        t = time.perf_counter()
        fitted[name] = clone(templates[name]).fit(X, y)
        costs[name] = time.perf_counter() - t
        # Stop measuring once the members so far could not go through even the fewer folds in time.
        if sum(costs.values()) * (FEWER_FOLDS - 1 + 1.25) + (time.perf_counter() - started) > left_s:
            break
    members, n_folds = plan(costs, left_s - (time.perf_counter() - started), fold_count(len(y)))
    dropped = [n for n in learners if n not in members]
    splits = folds(y, task != "regression", seed, n_folds) if n_folds else []
    if len(members) < 2 or not splits:
        reason = ("fewer than two learners to blend" if len(learners) < 2
                  else f"no time left for out-of-fold fits ({sum(costs.values()):.1f}s a fit of every member)"
                  if not n_folds else "too few rows per class for folds")
        return Blend(members, [1.0] + [0.0] * (len(members) - 1), False, reason,
                     seconds=time.perf_counter() - started, dropped=dropped, costs=costs)
    oof = []
    for name in members:
        out: np.ndarray | None = None
        for fit_rows, held in splits:
            model = clone(templates[name]).fit(X.iloc[fit_rows], y[fit_rows])
            s = predict(model, X.iloc[held], task)
            if out is None:
                out = np.zeros((len(y), *s.shape[1:]))
            out[held] = s
        assert out is not None
        oof.append(out)
    weights = list(choose_weights(oof, y, metric, n_classes))
    oof_metrics = {name: score(metric, y, s, n_classes) for name, s in zip(members, oof, strict=True)}
    # The blend judged on rows that neither its members nor its weights were fitted on: each fold's rows are
    # blended with weights chosen on the other folds' out-of-fold scores.
    crossed = np.zeros_like(oof[0])
    for fit_rows, held in splits:
        w = list(choose_weights([s[fit_rows] for s in oof], y[fit_rows], metric, n_classes))
        crossed[held] = combine([s[held] for s in oof], w)
    oof_metrics["blend"] = score(metric, y, crossed, n_classes)
    hib = HIGHER_IS_BETTER[metric]
    winner = members[0]
    best_single = max(members, key=lambda n: oof_metrics[n] if hib else -oof_metrics[n])
    near, even, weighted_wins, joined = (_window(members, oof, crossed, best_single, y, metric, n_classes, seed)
                                         if WINDOW else ([], None, False, []))
    if even is not None:
        oof_metrics["even"] = score(metric, y, combine(oof, even), n_classes)
    if even is not None and weighted_wins and sum(w > 0 for w in weights) >= 2:
        # The weighted blend is clearly better out of fold than the even one, nested (its weights' own fit not
        # counted): the rows tell the members apart after all.
        kept, reason = True, (f"better than an even blend of {', '.join(near)} out of fold (by more than "
                              f"{WINDOW_Z:g} standard errors)")
    elif even is not None:
        weights = even
        kept, reason = True, (f"an even blend of {', '.join(near)}: out of fold none is clearly worse than "
                              f"{best_single} alone (within {WINDOW_Z:g} standard errors on {len(y)} rows)"
                              if not joined else
                              f"an even blend of {', '.join(near)}: out of fold none of "
                              f"{', '.join(n for n in near if n not in joined)} is clearly worse than {best_single} "
                              f"alone, nor does {', '.join(joined)} make their even blend clearly worse (within "
                              f"{WINDOW_Z:g} standard errors on {len(y)} rows)")
    elif sum(w > 0 for w in weights) >= 2 and better(oof_metrics["blend"], oof_metrics[best_single], hib):
        kept, reason = True, f"better than {best_single} alone out of fold"
    elif first_is_winner and best_single != winner and better(oof_metrics[best_single], oof_metrics[winner], hib):
        # A member alone beats the search's winner on the same folds (a short search can end below LightGBM's
        # defaults): it ships, as a blend of one, rather than the weaker winner.
        weights = [1.0 if n == best_single else 0.0 for n in members]
        kept, reason = True, (f"{best_single} alone: better than the search's {winner} out of fold, and no blend "
                              "is better than it")
    elif sum(w > 0 for w in weights) < 2:
        kept, reason = False, f"the out-of-fold weights put everything on {members[int(np.argmax(weights))]}"
    else:
        kept, reason = False, f"not better than {best_single} alone out of fold"
    on_holdout = [predict(fitted[name], X_holdout, task) for name in members]
    holdout = {name: score(metric, y_holdout, s, n_classes) for name, s in zip(members, on_holdout, strict=True)}
    holdout["blend"] = score(metric, y_holdout, combine(on_holdout, weights), n_classes)
    return Blend(members, [round(w, 6) for w in weights], kept, reason, oof_metrics, holdout,
                 time.perf_counter() - started, len(splits), {n: fitted[n] for n in members} if kept else {},
                 dropped, costs)
