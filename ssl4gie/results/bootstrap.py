"""Bootstrap intervals over test images, per table cell and for paired differences between rows.

Choices, stated once:

* **Images are resampled, the metric recomputed.** Segmentation and depth headline metrics are means of
  per-image values (Dice, RMSE), so a resample's value is the mean over the drawn images. Classification F1 and
  detection mAP are not means of per-image scores: a resample's F1 is the macro F1 of the drawn images'
  confusion matrix, its mAP COCO's mAP of the drawn images' boxes (:mod:`ssl4gie.results.detection_ap`).
* **Seeds are averaged first.** All seeds of a row share one test split; each resample draws *images*, and the
  value is the mean over seeds on those images (for means: each image's value averaged over the seeds first).
* **Folds are resampled separately.** k-fold cells have disjoint test sets; each fold's images are drawn
  from that fold, and the value is the mean over folds, as the table's cell.
* **Paired differences** (row a − row b) draw the images both rows have (by ``name``, per fold), the same
  draw for both rows.
* ``scipy.stats.bootstrap`` does the resampling and the interval (``percentile`` by default; ``basic`` and
  ``BCa`` on request), with ``numpy.random.default_rng(seed)`` for every cell, so a report is reproducible and
  does not depend on the order of the cells.

Per-image CSV columns read (``per_image_test.csv``): ``name`` always; the metric's base name for means
(``dice``, ``rmse``); ``class_id`` and ``predicted_id`` (and ``p_<class>`` to count the classes) for F1;
``gt_boxes``, ``pred_boxes``, ``pred_scores`` (JSON lists, optional ``gt_labels``/``pred_labels``) for mAP.
"""

from __future__ import annotations

import json
import logging
import math
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import bootstrap

from ssl4gie.results.collect import ResultsError
from ssl4gie.results.detection_ap import KEYS as MAP_KEYS
from ssl4gie.results.detection_ap import DetectionMatches

log = logging.getLogger(__name__)

METHODS = ("percentile", "basic", "bca")
F1_KEYS = ("f1", "precision", "recall", "accuracy")
BOX_COLUMNS = ("gt_boxes", "pred_boxes", "pred_scores")


@dataclass(frozen=True)
class BootstrapOptions:
    """``resamples`` draws, a ``confidence`` interval by ``method``, all from ``default_rng(seed)``."""

    resamples: int = 2000
    confidence: float = 0.95
    seed: int = 0
    method: str = "percentile"

    def __post_init__(self) -> None:
        if self.method.lower() not in METHODS:
            raise ResultsError(f"--ci-method {self.method}: not known; valid: {', '.join(METHODS)}")
        if self.resamples < 10:
            raise ResultsError(
                f"--ci-resamples {self.resamples}: use at least 10 (1000 or more for a report)"
            )
        if not 0 < self.confidence < 1:
            raise ResultsError(f"--ci-level {self.confidence}: expected a fraction in (0, 1), e.g. 0.95")

    def describe(self) -> str:
        return (
            f"{self.confidence:.0%} bootstrap {self.method} interval over test images "
            f"({self.resamples} resamples, seed {self.seed})"
        )


class ImageStatistic:
    """A metric of a list of test images: ``self(idx)`` maps integer arrays ``(..., k)`` of positions into
    ``names`` to the metric of those images, shape ``(...)``."""

    names: pd.Index

    def __call__(self, idx: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class MeanOfImages(ImageStatistic):
    """Mean of per-image values (NaN images, e.g. depth frames without valid pixels, left out)."""

    def __init__(self, values: pd.Series) -> None:
        self.names, self.values = values.index, values.to_numpy(dtype=float)

    def __call__(self, idx: np.ndarray) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a resample of only NaN images: its value is NaN
            return np.nanmean(self.values[idx], axis=-1)


class MacroF1(ImageStatistic):
    """Macro F1 (or ``precision``/``recall``/``accuracy``) of the drawn images, averaged over seeds.

    ``true`` (n) and ``pred`` (seeds × n) hold class ids; the formulas are
    :func:`ssl4gie.metrics.classification.classification_metrics`' (``average_over``, ``protocol``), written
    again on count arrays so that all resamples of a batch are scored at once.
    """

    def __init__(
        self,
        names: pd.Index,
        true: np.ndarray,
        pred: np.ndarray,
        n_classes: int,
        key: str = "f1",
        average_over: str = "present",
        protocol: str = "ssl4gie",
    ) -> None:
        self.names, self.true, self.pred = names, np.asarray(true), np.atleast_2d(pred)
        self.n_classes, self.key, self.average_over, self.protocol = n_classes, key, average_over, protocol

    def __call__(self, idx: np.ndarray) -> np.ndarray:
        idx = np.asarray(idx)
        flat = idx.reshape(-1, idx.shape[-1])
        values = np.mean([self._score(flat, pred) for pred in self.pred], axis=0)
        return values.reshape(idx.shape[:-1])

    def _score(self, idx: np.ndarray, pred_ids: np.ndarray) -> np.ndarray:
        c, b = self.n_classes, len(idx)
        offset = (np.arange(b) * c)[:, None]
        true, pred = self.true[idx], pred_ids[idx]

        def counts(ids: np.ndarray) -> np.ndarray:
            return np.bincount((offset + ids).ravel(), minlength=b * c).reshape(b, c).astype(float)

        support, predicted = counts(true), counts(pred)
        tp = _hits(true, pred, offset, b, c)
        if self.key == "accuracy":
            return tp.sum(axis=1) / idx.shape[-1]
        if self.protocol == "study":
            s = 1e-8
            ratios = {
                "precision": (tp + s) / (predicted + s),
                "recall": (tp + s) / (support + s),
                "f1": 2 * (tp + s) / (predicted + support + s),
            }
        else:
            ratios = {
                "precision": _ratio(tp, predicted),
                "recall": _ratio(tp, support),
                "f1": _ratio(2 * tp, support + predicted),
            }
        scored = (support + predicted) > 0 if self.average_over == "present" else np.ones_like(tp, dtype=bool)
        return (ratios[self.key] * scored).sum(axis=1) / np.maximum(scored.sum(axis=1), 1)


def _hits(true: np.ndarray, pred: np.ndarray, offset: np.ndarray, b: int, c: int) -> np.ndarray:
    """True positives per resample and class: correct predictions counted in the true class."""
    weights = (true == pred).ravel().astype(float)
    return np.bincount((offset + true).ravel(), weights=weights, minlength=b * c).reshape(b, c)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator != 0)


class MeanAveragePrecision(ImageStatistic):
    """COCO ``map`` / ``map_50`` / ``map_75`` of the drawn images, averaged over seeds (one
    :class:`DetectionMatches` per seed, images in ``names`` order)."""

    def __init__(self, names: pd.Index, matches: Sequence[DetectionMatches], key: str = "map") -> None:
        self.names, self.matches, self.key = names, list(matches), key

    def __call__(self, idx: np.ndarray) -> np.ndarray:
        idx = np.asarray(idx)
        flat = idx.reshape(-1, idx.shape[-1])
        out = np.empty(len(flat))
        for j, drawn in enumerate(flat):
            weights = np.bincount(drawn, minlength=len(self.names))
            out[j] = np.mean([m.score(weights)[self.key] for m in self.matches])
        return out.reshape(idx.shape[:-1])


class Difference(ImageStatistic):
    """``a(idx) - b(idx)``: both rows scored on the same drawn images (``a.names`` equal to ``b.names``)."""

    def __init__(self, a: ImageStatistic, b: ImageStatistic) -> None:
        if not a.names.equals(b.names):
            raise ValueError("paired statistics need the same images in the same order")
        self.names, self.a, self.b = a.names, a, b

    def __call__(self, idx: np.ndarray) -> np.ndarray:
        return self.a(idx) - self.b(idx)


def _json_arrays(column: pd.Series, width: int | None, where: str) -> list[np.ndarray]:
    out = []
    for text in column:
        try:
            values = np.asarray(json.loads(text) if isinstance(text, str) else [], dtype=np.float64)
        except (json.JSONDecodeError, ValueError) as e:
            raise ResultsError(
                f"{where}: cannot read {column.name} {str(text)[:60]!r} as a JSON list ({e})"
            ) from e
        out.append(values.reshape(-1, width) if width else values.reshape(-1))
    return out


def detection_matches(frame: pd.DataFrame, where: str) -> DetectionMatches:
    """Matches of one run's per-image rows (see the module docstring for the columns)."""
    labels = {}
    for key in ("gt_labels", "pred_labels"):
        if key in frame:
            labels[key] = [a.astype(np.int64) for a in _json_arrays(frame[key], None, where)]
    return DetectionMatches(
        _json_arrays(frame["gt_boxes"], 4, where),
        _json_arrays(frame["pred_boxes"], 4, where),
        _json_arrays(frame["pred_scores"], None, where),
        labels.get("gt_labels"),
        labels.get("pred_labels"),
    )


def _n_classes(frames: Sequence[pd.DataFrame]) -> int:
    probability_columns = [c for c in frames[0].columns if c.startswith("p_")]
    if probability_columns:
        return len(probability_columns)
    return int(max(max(f["class_id"].max(), f["predicted_id"].max()) for f in frames)) + 1


def _macro_f1(
    base: str, frames: Sequence[pd.DataFrame], facts: dict, names: pd.Index | None, where: str
) -> ImageStatistic | None:
    """Classification's macro F1 (and its other macro means), recomputed from each image's class and prediction."""
    needed = ("name", "class_id", "predicted_id")
    if any(not set(needed) <= set(f.columns) for f in frames):
        log.warning("%s: needs columns %s for a test/%s interval; none computed", where, needed, base)
        return None
    indexed = [f.drop_duplicates("name").set_index("name") for f in frames]
    common = _common(indexed, names)
    n_classes = _n_classes(frames)
    protocol = str(facts.get("protocol") or "ssl4gie")
    average_over = facts.get("macro_over") or _infer_macro_over(indexed[0], n_classes, protocol, facts)
    return MacroF1(
        common, indexed[0].loc[common, "class_id"].to_numpy(int),
        np.stack([f.loc[common, "predicted_id"].to_numpy(int) for f in indexed]),
        n_classes, base, str(average_over), protocol,
    )  # fmt: skip


def _mean_ap(
    base: str, frames: Sequence[pd.DataFrame], facts: dict, names: pd.Index | None, where: str
) -> ImageStatistic | None:
    """Detection's COCO mAP, recomputed from each image's boxes."""
    if any(not {"name", *BOX_COLUMNS} <= set(f.columns) for f in frames):
        log.warning(
            "%s: no %s columns, so no test/%s interval (the detection evaluator must write each image's boxes)",
            where, "/".join(BOX_COLUMNS), base,
        )  # fmt: skip
        return None
    indexed = [f.drop_duplicates("name").set_index("name") for f in frames]
    common = _common(indexed, names)
    matches = [detection_matches(f.loc[common].reset_index(), where) for f in indexed]
    return MeanAveragePrecision(common, matches, base)


# Metrics that are no mean over images, recomputed from each image's rows: task -> (their keys, the statistic)
RECOMPUTED: dict[str, tuple[frozenset[str], Callable[..., ImageStatistic | None]]] = {
    "classification": (frozenset(F1_KEYS), _macro_f1),
    "detection": (frozenset(MAP_KEYS), _mean_ap),
}


def load_statistic(
    task: str,
    metric: str,
    frames: Sequence[pd.DataFrame],
    facts: dict | None = None,
    names: pd.Index | None = None,
    where: str = "per_image_test.csv",
) -> ImageStatistic | None:
    """The statistic of ``metric`` (``test/f1``, ``test/map_50``, ``test/dice``, ...) over the images of one fold.

    ``frames``: the per-image tables of the fold's seeds. ``facts``: the runs' metrics.json values
    (``protocol``, ``macro_over``, ``test/n_classes_scored``) that fix the F1 formula. ``names``: restrict to
    these images (for pairing). None (with a warning) when the tables lack the needed columns.
    """
    base = metric.rsplit("/", 1)[-1]
    keys, recompute = RECOMPUTED.get(task, (frozenset(), None))
    if recompute is not None and base in keys:
        return recompute(base, frames, facts or {}, names, where)
    if any(base not in f.columns or "name" not in f.columns for f in frames):
        log.warning("%s: no column 'name' or %r; no interval for %s", where, base, metric)
        return None
    values = pd.concat([f[["name", base]] for f in frames]).dropna().groupby("name")[base].mean()
    if names is not None:
        values = values.reindex(names)
    return MeanOfImages(values)


def _common(indexed: Sequence[pd.DataFrame], names: pd.Index | None) -> pd.Index:
    """Images every seed scored (sorted), or ``names`` when given."""
    if names is not None:
        return names
    common = indexed[0].index
    for frame in indexed[1:]:
        common = common.intersection(frame.index)
    return pd.Index(sorted(common), name="name")


def _infer_macro_over(frame: pd.DataFrame, n_classes: int, protocol: str, facts: dict) -> str:
    """``all`` when the run says so or scored classes absent from its own test rows; else ``present``
    (the default of ``task.macro_over``)."""
    if protocol == "study":
        return "all"
    scored = facts.get("test/n_classes_scored")
    present = len(set(frame["class_id"]) | set(frame["predicted_id"]))
    if scored is not None and not pd.isna(scored) and int(scored) > present:
        return "all"
    return "present"


def read_per_image(paths: Sequence[Path]) -> list[pd.DataFrame]:
    """The per-image tables that exist (names kept as strings); a missing or unreadable one is logged."""
    frames = []
    for path in paths:
        if not path.is_file():
            log.warning("%s is missing; this run is left out of the bootstrap", path)
            continue
        frames.append(pd.read_csv(path, dtype={"name": str}))
    return frames


def fold_statistics(
    cell_runs: pd.DataFrame,
    sweep_dir: str | os.PathLike,
    task: str,
    metric: str,
    names: dict | None = None,
) -> dict:
    """``{fold: statistic}`` of one cell's runs (fold ``-1`` for runs without folds); ``names``: per fold, the
    images to restrict to. Folds whose tables lack the needed columns are left out."""
    sweep_dir = Path(sweep_dir)
    out = {}
    folds = cell_runs["fold"] if "fold" in cell_runs else pd.Series(-1, index=cell_runs.index)
    for fold, runs in cell_runs.groupby(folds.fillna(-1).astype(int)):
        paths = [sweep_dir / p / "per_image_test.csv" for p in runs["path"]]
        frames = read_per_image(paths)
        if not frames:
            continue
        facts = runs.iloc[0].to_dict()
        where = f"{paths[0].parent.parent}/*/per_image_test.csv" if len(paths) > 1 else str(paths[0])
        restrict = None if names is None else names.get(fold)
        statistic = load_statistic(task, metric, frames, facts, restrict, where)
        if statistic is not None and len(statistic.names):
            out[int(fold)] = statistic
    return out


def interval(statistics: Sequence[ImageStatistic], options: BootstrapOptions) -> tuple[float, float, float]:
    """``(estimate, low, high)``: the mean over the folds' statistics on all their images, and its bootstrap
    interval with each fold resampled from its own images. NaN interval (with a warning) when a fold has
    fewer than 2 images or the resampled values are degenerate for the method."""
    statistics = list(statistics)
    if not statistics:
        return math.nan, math.nan, math.nan
    samples = [np.arange(len(s.names)) for s in statistics]
    estimate = _estimate(statistics)
    if min(len(i) for i in samples) < 2:
        log.warning("a bootstrap needs at least 2 images per fold; interval left empty")
        return estimate, math.nan, math.nan

    def statistic(*idx: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.mean([s(np.moveaxis(i, axis, -1)) for s, i in zip(statistics, idx, strict=True)], axis=0)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a degenerate distribution: NaN bounds, logged below
        result = bootstrap(
            samples, statistic, n_resamples=options.resamples, confidence_level=options.confidence,
            method=options.method.lower(), vectorized=True, paired=False, batch=_batch(statistics),
            rng=np.random.default_rng(options.seed),
        )  # fmt: skip
    low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    if not (math.isfinite(low) and math.isfinite(high)):
        log.warning("bootstrap interval undefined (all resampled values equal or NaN)")
    return estimate, low, high


def _batch(statistics: Sequence[ImageStatistic]) -> int:
    """Resamples per statistic call: bounded memory (resamples × images index arrays)."""
    n = max(len(s.names) for s in statistics)
    return max(1, min(1000, 4_000_000 // max(n, 1)))


def cell_interval(
    cell_runs: pd.DataFrame, sweep_dir: str | os.PathLike, task: str, metric: str, options: BootstrapOptions
) -> tuple[float, float, float]:
    """``(estimate, low, high)`` of one table cell (see the module docstring)."""
    return interval(list(fold_statistics(cell_runs, sweep_dir, task, metric).values()), options)


def paired_interval(
    runs_a: pd.DataFrame,
    runs_b: pd.DataFrame,
    sweep_dir: str | os.PathLike,
    task: str,
    metric: str,
    options: BootstrapOptions,
) -> dict[str, float]:
    """Row a − row b on the images both scored (paired by name per fold): ``diff`` and its interval
    ``diff_low``/``diff_high``, ``n_pairs`` (images), ``mean_a``/``mean_b`` (each row on those images)."""
    empty = dict(
        diff=math.nan, diff_low=math.nan, diff_high=math.nan, n_pairs=0, mean_a=math.nan, mean_b=math.nan
    )
    a = fold_statistics(runs_a, sweep_dir, task, metric)
    b = fold_statistics(runs_b, sweep_dir, task, metric)
    common = {}
    for fold in sorted(set(a) & set(b)):
        shared = a[fold].names.intersection(b[fold].names)
        if len(shared):
            common[fold] = pd.Index(sorted(shared), name="name")
    if not common:
        return empty
    a = fold_statistics(runs_a, sweep_dir, task, metric, common)
    b = fold_statistics(runs_b, sweep_dir, task, metric, common)
    folds = [f for f in common if f in a and f in b]
    if not folds:
        return empty
    diff, low, high = interval([Difference(a[f], b[f]) for f in folds], options)
    mean_a = _estimate([a[f] for f in folds])
    return dict(
        diff=diff, diff_low=low, diff_high=high, n_pairs=sum(len(a[f].names) for f in folds),
        mean_a=mean_a, mean_b=_estimate([b[f] for f in folds]),
    )  # fmt: skip


def _estimate(statistics: Sequence[ImageStatistic]) -> float:
    """The mean over folds of each statistic on all its images."""
    return float(np.mean([s(np.arange(len(s.names))) for s in statistics]))
