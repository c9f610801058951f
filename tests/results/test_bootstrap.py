"""Bootstrap intervals: coverage on known distributions, determinism, metric recomputation against the run's own
scorers (classification_metrics, torchmetrics mAP), and the table / significance report on hand-made sweeps."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ssl4gie.metrics.classification import classification_metrics
from ssl4gie.metrics.detection import DetectionMetricAccumulator
from ssl4gie.results import collect_runs, format_table, significance, study_table
from ssl4gie.results.__main__ import main
from ssl4gie.results.bootstrap import (
    BootstrapOptions,
    MacroF1,
    MeanOfImages,
    cell_interval,
    interval,
)
from ssl4gie.results.collect import ResultsError
from ssl4gie.results.detection_ap import DetectionMatches

CLASSES = ("a", "b", "c", "d")


def write_run(folder: Path, facts: dict, frame: pd.DataFrame) -> None:
    """A complete run folder as ssl4gie.run.pipeline writes it: metrics.json (last) and per_image_test.csv."""
    folder.mkdir(parents=True)
    frame.to_csv(folder / "per_image_test.csv", index=False)
    (folder / "metrics.json").write_text(json.dumps({"status": "complete", "frozen": False} | facts))


def identity(row: str, task: str, dataset: str, seed: int) -> dict:
    backbone = {"RN": "resnet50", "VT": "vit_b"}[row.split("-")[0]]
    return {
        "task": task,
        "dataset": dataset,
        "backbone": backbone,
        "pretraining": "x",
        "row": row,
        "seed": seed,
    }


# ------------------------------------------------------------------------------------------------ coverage
@pytest.mark.parametrize("method", ["percentile", "bca"])
def test_interval_covers_the_true_mean_at_about_the_stated_rate(method):
    """300 samples of 60 draws from N(0.7, 0.1²): the 95 % interval of the mean covers 0.7 in about 95 %."""
    rng = np.random.default_rng(123)
    trials, covered = 300, 0
    for trial in range(trials):
        values = pd.Series(rng.normal(0.7, 0.1, 60), index=pd.Index([f"{i:02d}" for i in range(60)]))
        _, low, high = interval(
            [MeanOfImages(values)], BootstrapOptions(resamples=400, seed=trial, method=method)
        )
        covered += low <= 0.7 <= high
    # binomial sd at 95 % over 300 trials is 1.3 %; the bootstrap runs slightly narrow for n = 60
    assert 0.89 <= covered / trials <= 0.985


def test_accuracy_interval_covers_the_true_rate():
    """Classification resamples images and recomputes the metric: accuracy of p = 0.8 correct predictions."""
    rng = np.random.default_rng(5)
    trials, covered, n = 200, 0, 80
    names = pd.Index([str(i) for i in range(n)])
    for trial in range(trials):
        true = rng.integers(0, 4, n)
        pred = np.where(rng.random(n) < 0.8, true, (true + 1) % 4)
        stat = MacroF1(names, true, pred[None], 4, key="accuracy")
        _, low, high = interval([stat], BootstrapOptions(resamples=400, seed=trial))
        covered += low <= 0.8 <= high
    assert 0.89 <= covered / trials <= 0.99


def test_intervals_are_deterministic_given_a_seed():
    rng = np.random.default_rng(0)
    values = pd.Series(rng.exponential(1.0, 40), index=pd.Index([str(i) for i in range(40)]))
    first = interval([MeanOfImages(values)], BootstrapOptions(resamples=300, seed=7))
    assert first == interval([MeanOfImages(values)], BootstrapOptions(resamples=300, seed=7))
    other = interval([MeanOfImages(values)], BootstrapOptions(resamples=300, seed=8))
    assert other[0] == first[0] and other[1:] != first[1:]  # same estimate, another draw
    assert first[1] < values.mean() < first[2]


def test_bad_options_are_user_errors():
    with pytest.raises(ResultsError, match="--ci-method"):
        BootstrapOptions(method="jackknife")
    with pytest.raises(ResultsError, match="--ci-level"):
        BootstrapOptions(confidence=95)


# ---------------------------------------------------------------------------- metric recomputation
@pytest.mark.parametrize(
    ("average_over", "protocol"), [("present", "ssl4gie"), ("all", "ssl4gie"), ("all", "study")]
)
def test_macro_f1_of_resamples_matches_classification_metrics(average_over, protocol):
    rng = np.random.default_rng(1)
    n = 50
    true = rng.integers(0, 5, n)  # class 5 of 6 never occurs: "present" and "all" differ
    pred = np.where(rng.random(n) < 0.6, true, rng.integers(0, 5, n))
    stat = MacroF1(pd.Index([str(i) for i in range(n)]), true, pred[None], 6, "f1", average_over, protocol)
    idx = rng.integers(0, n, (5, n))
    expected = [
        classification_metrics(true[i], pred[i], 6, average_over=average_over, protocol=protocol)[0]["f1"]
        for i in idx
    ]
    assert stat(idx) == pytest.approx(expected, abs=1e-12)


def random_detections(rng: np.random.Generator, n: int, classes: int = 1):
    """Per image: 0-2 ground-truth boxes, 0-5 noisy predictions around them (some around nothing)."""
    gts, preds, scores, gt_labels, pred_labels = [], [], [], [], []
    for _ in range(n):
        g, k = int(rng.integers(0, 3)), int(rng.integers(0, 6))
        xy = rng.uniform(0, 200, (g, 2))
        gt = np.concatenate([xy, xy + rng.uniform(20, 80, (g, 2))], axis=1)
        centre = gt[rng.integers(0, g, k)] if g else rng.uniform(0, 200, (k, 4))
        pred = centre + rng.normal(0, 8, (k, 4))
        pred[:, 2:] = np.maximum(pred[:, 2:], pred[:, :2] + 1)
        gts.append(gt.astype(np.float32))
        preds.append(pred.astype(np.float32))
        scores.append(rng.uniform(0, 1, k).astype(np.float32))
        gt_labels.append(rng.integers(0, classes, g))
        pred_labels.append(rng.integers(0, classes, k))
    return gts, preds, scores, gt_labels, pred_labels


def torchmetrics_map(images: list[int], gts, preds, scores, gt_labels, pred_labels) -> dict:
    """What the run scores with: ssl4gie.metrics.detection (torchmetrics + pycocotools), repeats as new images."""
    acc = DetectionMetricAccumulator()
    acc.update(
        [
            {
                "boxes": torch.from_numpy(preds[i]),
                "scores": torch.from_numpy(scores[i]),
                "labels": torch.from_numpy(pred_labels[i]),
            }
            for i in images
        ],
        [
            {"boxes": torch.from_numpy(gts[i]).reshape(-1, 4), "labels": torch.from_numpy(gt_labels[i])}
            for i in images
        ],
        [str(j) for j in range(len(images))],
    )
    return acc.compute()[0]


def pycocotools_map(images: list[int], gts, preds, scores, gt_labels, pred_labels) -> float:
    """COCOeval's box mAP straight from pycocotools, each drawn image (repeats too) a new image id."""
    dataset = {"images": [{"id": j} for j in range(len(images))], "annotations": []}
    dataset["categories"] = [
        {"id": c} for c in sorted({int(c) for labels in gt_labels + pred_labels for c in labels})
    ]
    detections = []
    for j, i in enumerate(images):
        for box, label in zip(gts[i].astype(float), gt_labels[i], strict=True):
            x0, y0, x1, y1 = box
            dataset["annotations"].append(
                {
                    "id": len(dataset["annotations"]) + 1,
                    "image_id": j,
                    "category_id": int(label),
                    "iscrowd": 0,
                }
                | {"bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0)}
            )
        for box, score, label in zip(preds[i].astype(float), scores[i], pred_labels[i], strict=True):
            x0, y0, x1, y1 = box
            detections.append(
                {
                    "image_id": j,
                    "category_id": int(label),
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "score": float(score),
                }
            )
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        truth = COCO()
        truth.dataset = dataset
        truth.createIndex()
        evaluation = COCOeval(truth, truth.loadRes(detections), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return float(evaluation.stats[0])


@pytest.mark.parametrize("classes", [1, 2])
def test_map_of_resamples_matches_coco(classes):
    """All images once: the run's own scorer (torchmetrics); resamples with repeats: pycocotools itself."""
    rng = np.random.default_rng(classes)
    data = random_detections(rng, 30, classes)
    matches = DetectionMatches(*data[:3], gt_labels=data[3], pred_labels=data[4])
    full = matches.score()
    reference = torchmetrics_map(list(range(30)), *data)
    for key in ("map", "map_50", "map_75"):
        assert full[key] == pytest.approx(reference[key], abs=1e-6)
    for _ in range(3):  # a bootstrap resample: images drawn with repeats
        drawn = rng.integers(0, 30, 30)
        resampled = matches.score(np.bincount(drawn, minlength=30))
        assert resampled["map"] == pytest.approx(pycocotools_map(list(drawn), *data), abs=1e-9)


# ------------------------------------------------------------------------------- hand-made sweeps
def detection_frame(data, names) -> pd.DataFrame:
    """Per-image rows in the format the detection evaluator is asked to write (boxes in the scored frame)."""
    gts, preds, scores, _, _ = data
    return pd.DataFrame(
        {
            "name": names,
            "n_gt": [len(g) for g in gts],
            "gt_boxes": [json.dumps(g.tolist()) for g in gts],
            "pred_boxes": [json.dumps(p.tolist()) for p in preds],
            "pred_scores": [json.dumps(s.tolist()) for s in scores],
        }
    )


def classification_frame(rng, names, accuracy: float) -> pd.DataFrame:
    true = np.arange(len(names)) % len(CLASSES)
    pred = np.where(rng.random(len(names)) < accuracy, true, (true + 1) % len(CLASSES))
    frame = pd.DataFrame({"name": names, "class_id": true, "predicted_id": pred})
    return frame.assign(**{f"p_{c}": 0.25 for c in CLASSES})


@pytest.fixture
def mixed_sweep(tmp_path: Path):
    """Two rows × (classification, detection, segmentation) × 2 seeds, per-image tables in the real formats."""
    rng = np.random.default_rng(0)
    names = [f"{i:03d}" for i in range(40)]
    frames = {}
    for r, row in enumerate(("RN-IN-SL", "VT-IN-SL")):
        for seed in (1, 2):
            cls = classification_frame(rng, names, 0.9 - 0.3 * r)
            f1 = classification_metrics(cls["class_id"], cls["predicted_id"], 4)[0]["f1"]
            write_run(
                tmp_path / f"cls-{row}-{seed}",
                identity(row, "classification", "hk", seed) | {"test/f1": f1},
                cls,
            )
            data = random_detections(rng, 40)
            det = detection_frame(data, names)
            m = torchmetrics_map(list(range(40)), *data)["map"]
            write_run(
                tmp_path / f"det-{row}-{seed}",
                identity(row, "detection", "kvasir_det", seed) | {"test/map": m},
                det,
            )
            dice = np.clip(rng.normal(0.85 - 0.2 * r, 0.05, 40), 0, 1)
            seg = pd.DataFrame({"name": names, "dice": dice})
            write_run(
                tmp_path / f"seg-{row}-{seed}",
                identity(row, "segmentation", "kvasir_seg", seed) | {"test/dice": dice.mean()},
                seg,
            )
            frames[(row, seed)] = {"classification": cls, "detection": det, "segmentation": seg}
    return tmp_path, frames


def test_table_shows_intervals_around_the_seed_means(mixed_sweep):
    root, _ = mixed_sweep
    options = BootstrapOptions(resamples=200, seed=3)
    runs = collect_runs(root)
    table = study_table(runs, sweep_dir=root, ci=options)
    for column in ("classification/hk", "detection/kvasir_det", "segmentation/kvasir_seg"):
        for row in ("RN-IN-SL", "VT-IN-SL"):
            mean, low, high = (table.loc[row, (column, s)] for s in ("mean", "ci_low", "ci_high"))
            assert low < mean < high  # every metric recomputed on all images equals the runs' own value
            cell_runs = runs[(runs["row"] == row) & (runs["task_dataset"] == column)]
            estimate, *_ = cell_interval(
                cell_runs, root, column.split("/")[0], table.attrs["metrics"][column], options
            )
            assert estimate == pytest.approx(mean, abs=1e-6)  # seeds averaged: mean over seeds of the metric
    markdown = format_table(table, "markdown", digits=3)
    cell = table["segmentation/kvasir_seg"].loc["RN-IN-SL"]
    assert f"[{cell['ci_low']:.3f}, {cell['ci_high']:.3f}]" in markdown
    assert "95% bootstrap percentile interval over test images (200 resamples, seed 3)" in markdown
    assert re.search(r"\[\d\.\d{3}, \d\.\d{3}\]", format_table(table, "latex"))
    plain = format_table(study_table(runs), "markdown")
    assert "[" not in plain.split("\n\n")[0]  # no intervals without --ci


def test_paired_bootstrap_differences_beside_wilcoxon(mixed_sweep):
    root, _ = mixed_sweep
    options = BootstrapOptions(resamples=300, seed=0)
    tests = significance(collect_runs(root), root, ci=options).set_index("task_dataset")
    seg = tests.loc["segmentation/kvasir_seg"]
    assert np.isfinite(seg["p_value"])  # Wilcoxon still there
    assert seg["diff"] == pytest.approx(seg["mean_a"] - seg["mean_b"])
    assert 0 < seg["diff_low"] < seg["diff"] < seg["diff_high"]  # RN-IN-SL is 0.2 Dice better
    cls = tests.loc["classification/hk"]
    assert np.isnan(cls["p_value"]) and "not a mean of per-image values" in cls["note"]
    assert cls["diff_low"] > 0 and cls["better"] == "RN-IN-SL" and cls["n_pairs"] == 40
    det = tests.loc["detection/kvasir_det"]
    assert det["diff_low"] < det["diff"] < det["diff_high"] and det["n_pairs"] == 40
    without = significance(collect_runs(root), root)
    assert set(without["task_dataset"]) == {"segmentation/kvasir_seg"} and without["diff"].isna().all()


def test_a_row_against_itself_differs_by_zero(tmp_path):
    names = [str(i) for i in range(30)]
    dice = np.linspace(0.5, 0.9, 30)
    for row in ("RN-IN-SL", "RN-NA-NA"):
        frame = pd.DataFrame({"name": names, "dice": dice})
        write_run(
            tmp_path / row, identity(row, "segmentation", "kvasir_seg", 1) | {"test/dice": dice.mean()}, frame
        )
    tests = significance(collect_runs(tmp_path), tmp_path, ci=BootstrapOptions(resamples=100))
    assert tests.loc[0, ["diff", "diff_low", "diff_high"]].tolist() == [0.0, 0.0, 0.0]


def test_detection_without_boxes_gives_no_interval(tmp_path, caplog):
    names = [str(i) for i in range(10)]
    frame = pd.DataFrame({"name": names, "n_gt": 1, "n_pred": 2, "mean_best_iou": 0.5})  # today's rows
    write_run(tmp_path / "det", identity("RN-IN-SL", "detection", "kvasir_det", 1) | {"test/map": 0.4}, frame)
    table = study_table(collect_runs(tmp_path), sweep_dir=tmp_path, ci=BootstrapOptions(resamples=50))
    assert np.isnan(table.loc["RN-IN-SL", ("detection/kvasir_det", "ci_low")])
    assert "gt_boxes/pred_boxes/pred_scores" in caplog.text


@pytest.mark.slow
def test_cli_ci_writes_intervals(mixed_sweep, tmp_path):
    root, _ = mixed_sweep
    out = tmp_path / "report"
    assert main([str(root), "--out", str(out), "--ci", "--ci-resamples", "100", "--ci-seed", "1"]) == 0
    assert "bootstrap percentile interval" in (out / "table.md").read_text()
    tests = pd.read_csv(out / "significance.csv")
    assert tests["diff_low"].notna().all() and "paired 95% bootstrap" in (out / "significance.md").read_text()
    first = (out / "table.md").read_text()
    assert main([str(root), "--out", str(out), "--ci", "--ci-resamples", "100", "--ci-seed", "1"]) == 0
    assert (out / "table.md").read_text() == first  # deterministic given the seed
