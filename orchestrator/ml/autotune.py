"""The `autotune` ML tool: a grid search over a scikit-learn classifier, one offloaded task per trial.

sklearn is imported only inside the functions that run as offloaded tasks, so importing this module (the
HTTP ingress does, to publish the input schema) and running the coordinator stay light.
"""

# pyright: basic
# (scikit-learn ships no type information; strict mode would flag every call into it)

from __future__ import annotations

import math
from collections.abc import Mapping
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from orchestrator.errors import ToolError
from orchestrator.tools.python import MlRuntime

MODELS = ("svc", "logistic_regression", "random_forest", "gradient_boosting", "knn")
DATASETS = ("iris", "wine", "breast_cancer", "digits")  # bundled with scikit-learn: no download
SCORINGS = ("accuracy", "balanced_accuracy", "f1_macro", "f1_weighted", "precision_macro", "recall_macro")
MAX_TRIALS = 256
MAX_SEED = 2**32 - 1
_SCALED = frozenset({"svc", "logistic_regression", "knn"})  # distance/margin based: standardise features
_RESERVED = {
    "random_state": "set by `seed`",
    "n_jobs": "each trial is one task with the tool's num_cpus",
    "verbose": "not searchable",
}
_SCALAR = (str, int, float, bool, type(None))

INPUT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "properties": {
        "model": {"enum": list(MODELS), "description": "the scikit-learn classifier to tune"},
        "dataset": {"enum": list(DATASETS), "description": "a dataset bundled with scikit-learn"},
        "search": {
            "type": "object",
            "description": f'grid: {{"param": [values…]}}; every combination is one trial, at most {MAX_TRIALS}',
            "propertyNames": {"pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
            "additionalProperties": {
                "type": "array",
                "minItems": 1,
                "maxItems": MAX_TRIALS,
                "items": {"type": ["string", "number", "boolean", "null"]},
            },
            "default": {},
        },
        "cv": {"type": "integer", "minimum": 2, "maximum": 10, "default": 5, "description": "stratified folds"},
        "scoring": {"enum": list(SCORINGS), "default": "accuracy"},
        "seed": {"type": "integer", "minimum": 0, "maximum": MAX_SEED, "default": 0,
                 "description": "fold shuffling and the model's random_state: same seed, same result"},
    },
    "required": ["model", "dataset"],
    "additionalProperties": False,
}


@dataclass(frozen=True, slots=True)
class Spec:
    """A validated autotune input."""

    model: str
    dataset: str
    search: dict[str, list[Any]]
    cv: int
    scoring: str
    seed: int


@dataclass(frozen=True, slots=True)
class Trial:
    """One parameter combination to cross-validate; picklable, sent to an offloaded task."""

    spec: Spec
    params: dict[str, Any]


def parse_input(tool_input: Mapping[str, Any]) -> Spec:
    """Check the input without sklearn; a ToolError names the field at fault."""
    unknown = sorted(set(tool_input) - set(INPUT_SCHEMA["properties"]))
    if unknown:
        raise ToolError(f"{unknown[0]}: unknown field")
    model = _choice(tool_input, "model", MODELS, None)
    dataset = _choice(tool_input, "dataset", DATASETS, None)
    scoring = _choice(tool_input, "scoring", SCORINGS, "accuracy")
    cv = _integer(tool_input, "cv", 5, 2, 10)
    seed = _integer(tool_input, "seed", 0, 0, MAX_SEED)
    search = tool_input.get("search", {})
    if not isinstance(search, Mapping):
        raise ToolError('search: must be an object {"param": [values…]}')
    grid: dict[str, list[Any]] = {}
    for name, values in search.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise ToolError(f"search.{name}: not a parameter name")
        if name in _RESERVED:
            raise ToolError(f"search.{name}: {_RESERVED[name]}")
        if not isinstance(values, list) or not values:
            raise ToolError(f"search.{name}: must be a non-empty list of values")
        if not all(isinstance(v, _SCALAR) for v in values):
            raise ToolError(f"search.{name}: values must be strings, numbers, booleans or null")
        grid[name] = list(values)
    trials = math.prod(len(v) for v in grid.values())
    if trials > MAX_TRIALS:
        raise ToolError(f"search: {trials} trials (the product of the value counts) exceed the limit of {MAX_TRIALS}")
    return Spec(model, dataset, grid, cv, scoring, seed)


def _choice(tool_input: Mapping[str, Any], field: str, allowed: tuple[str, ...], default: str | None) -> str:
    value = tool_input.get(field, default)
    if value is None:
        raise ToolError(f"{field}: required, one of {', '.join(allowed)}")
    if value not in allowed:
        raise ToolError(f"{field}: {value!r} is not one of {', '.join(allowed)}")
    return str(value)


def _integer(tool_input: Mapping[str, Any], field: str, default: int, low: int, high: int) -> int:
    value = tool_input.get(field, default)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ToolError(f"{field}: must be an integer from {low} to {high}")
    return value


def make_estimator(model: str, seed: int, params: Mapping[str, Any] | None = None) -> Any:
    """The classifier (behind a StandardScaler for svc, logistic_regression, knn) with `params` set."""
    from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    estimator: Any
    if model == "svc":
        estimator = SVC(random_state=seed)
    elif model == "logistic_regression":
        estimator = LogisticRegression(random_state=seed, max_iter=1000)
    elif model == "random_forest":
        estimator = RandomForestClassifier(random_state=seed, n_jobs=1)
    elif model == "gradient_boosting":
        estimator = GradientBoostingClassifier(random_state=seed)
    elif model == "knn":
        estimator = KNeighborsClassifier()
    else:
        raise ToolError(f"model: {model!r} is not one of {', '.join(MODELS)}")
    if params:
        estimator.set_params(**params)
    if model in _SCALED:
        return Pipeline([("scale", StandardScaler()), ("model", estimator)])
    return estimator


def plan_trials(spec: Spec) -> list[dict[str, Any]]:
    """Every parameter combination, in GridSearchCV's order, after checking names and values (offloaded)."""
    from sklearn.model_selection import ParameterGrid

    known = make_estimator(spec.model, spec.seed)
    if spec.model in _SCALED:
        known = known.named_steps["model"]
    names = set(known.get_params(deep=False)) - set(_RESERVED)
    for name, values in spec.search.items():
        if name not in names:
            raise ToolError(f"search.{name}: not a parameter of {spec.model}; known: {', '.join(sorted(names))}")
        for value in values:
            _check_value(spec, name, value)
    return list(ParameterGrid(spec.search))


def _check_value(spec: Spec, name: str, value: Any) -> None:
    """sklearn's own parameter check (the one `fit` runs), so a bad value is named before any trial."""
    estimator = make_estimator(spec.model, spec.seed, {name: value})
    if spec.model in _SCALED:
        estimator = estimator.named_steps["model"]
    validate = getattr(estimator, "_validate_params", None)
    if validate is None:
        return
    try:
        validate()
    except (ValueError, TypeError) as exc:
        raise ToolError(f"search.{name}: {exc}") from None


def load_dataset(name: str) -> tuple[Any, Any]:
    """Features and labels of a bundled dataset."""
    from sklearn import datasets

    if name not in DATASETS:
        raise ToolError(f"dataset: {name!r} is not one of {', '.join(DATASETS)}")
    return getattr(datasets, f"load_{name}")(return_X_y=True)


def folds(spec: Spec) -> Any:
    """The cross-validation splitter: stratified, shuffled by the seed."""
    from sklearn.model_selection import StratifiedKFold

    return StratifiedKFold(n_splits=spec.cv, shuffle=True, random_state=spec.seed)


def score_trial(trial: Trial) -> float:
    """Mean cross-validated score of one parameter combination (runs as one offloaded task)."""
    from sklearn.model_selection import cross_val_score

    spec = trial.spec
    features, labels = load_dataset(spec.dataset)
    params = {f"model__{k}" if spec.model in _SCALED else k: v for k, v in trial.params.items()}
    estimator = make_estimator(spec.model, spec.seed)
    estimator.set_params(**params)
    try:
        scores = cross_val_score(estimator, features, labels, cv=folds(spec), scoring=spec.scoring,
                                 error_score="raise", n_jobs=1)
    except Exception as exc:
        raise ToolError(f"trial {trial.params}: {type(exc).__name__}: {str(exc)[:300]}") from None
    return float(scores.mean())


def resumed_scores(checkpoint: Mapping[str, Any] | None, trials_total: int) -> dict[int, float]:
    """Scores of the trials an earlier attempt finished; empty if the checkpoint does not fit this grid."""
    if not checkpoint or checkpoint.get("trials_total") != trials_total:
        return {}
    scores: dict[int, float] = {}
    for pair in checkpoint.get("scores") or []:
        if (isinstance(pair, list | tuple) and len(pair) == 2 and isinstance(pair[0], int)
                and 0 <= pair[0] < trials_total and isinstance(pair[1], int | float)):
            scores[pair[0]] = float(pair[1])
    return scores


def summarize(spec: Spec, candidates: list[dict[str, Any]], scores: Mapping[int, float]) -> dict[str, Any]:
    """The result: trials best first (ties in grid order, as GridSearchCV breaks them)."""
    order = sorted(scores, key=lambda i: (-scores[i], i))
    trials = [{"params": candidates[i], "score": scores[i]} for i in order]
    return {
        "best_params": trials[0]["params"],
        "best_score": trials[0]["score"],
        "trials": trials,
        "model": spec.model,
        "dataset": spec.dataset,
        "cv": spec.cv,
        "scoring": spec.scoring,
        "seed": spec.seed,
    }


async def autotune(tool_input: dict[str, Any], runtime: MlRuntime) -> dict[str, Any]:
    """Cross-validate every combination of `search`, one task each; resume without redoing finished trials."""
    spec = parse_input(tool_input)
    candidates = await runtime.run(plan_trials, spec)
    total = len(candidates)
    scores = resumed_scores(runtime.previous_checkpoint, total)
    todo = [i for i in range(total) if i not in scores]
    trials = [Trial(spec, candidates[i]) for i in todo]
    async with aclosing(runtime.map(score_trial, trials)) as results:
        async for k, score in results:
            scores[todo[k]] = score
            progress = {"trials_done": len(scores), "trials_total": total, "best_score": max(scores.values())}
            state = {"trials_total": total, "scores": [[i, s] for i, s in sorted(scores.items())]}
            await runtime.checkpoint(state, progress)
    return summarize(spec, candidates, scores)


autotune.input_schema = INPUT_SCHEMA  # pyright: ignore[reportFunctionMemberAccess]
