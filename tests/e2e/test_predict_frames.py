"""``mode=predict input=DIR``: a trained checkpoint on a folder of frames of any size, format and name, no dataset."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import compose_config, task_overrides
from PIL import Image

from ssl4gie.data.segmentation import SegmentationItem, decode_pair
from ssl4gie.data.transforms import normalize
from ssl4gie.engine.checkpoint import read_run_checkpoint
from ssl4gie.errors import ConfigError
from ssl4gie.run.pipeline import execute
from ssl4gie.tasks.segmentation import SegmentationEvaluator
from ssl4gie.utils.conf import instantiate_checked

# file name -> (width, height, PIL format): mixed sizes, formats, suffix cases, spaces and dots in names
FRAMES = {
    "frame 1.jpg": (70, 50, "JPEG"),
    "b.v2.PNG": (33, 47, "PNG"),
    "scan.tif": (140, 90, "TIFF"),  # larger than the ViT detector's 128² canvas: scaled down to fit
    "wide shot.bmp": (96, 40, "BMP"),
}
SKIPPED = ("notes.txt", "broken.jpg")
CELLS = [("segmentation", "resnet50"), ("classification", "resnet50"), ("depth", "resnet50"),
         ("detection", "resnet50"), ("detection", "vit_b")]  # fmt: skip


def paths_in(folder: Path) -> list[str]:
    return [f"paths.{key}={folder / key}" for key in ("data_dir", "cache_dir", "weights_dir")] + [
        f"paths.output_root={folder / 'outputs'}"
    ]


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[tuple[str, str], tuple[Path, list[str]]]:
    """One 1-epoch tiny checkpoint per (task, backbone) of CELLS, trained lazily, with its overrides."""
    made: dict = {}

    def get(task: str, backbone: str) -> tuple[Path, list[str]]:
        if (task, backbone) not in made:
            folder = tmp_path_factory.mktemp(f"{task}-{backbone}")
            overrides = task_overrides(task, paths_in(folder), f"backbone={backbone}")
            execute(compose_config(overrides, folder / "train"))
            made[task, backbone] = (folder / "train" / "best.pt", overrides)
        return made[task, backbone]

    return get


@pytest.fixture(scope="session")
def frames(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("frames")
    rng = np.random.default_rng(0)
    for name, (width, height, fmt) in FRAMES.items():
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        pixels[height // 4 : height // 2, width // 4 : width // 2] = (200, 60, 60)  # something polyp-like
        image = Image.fromarray(pixels)
        (image.convert("L") if fmt == "PNG" else image).save(folder / name, format=fmt)  # a grey frame too
    (folder / "notes.txt").write_text("not an image\n")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is no JPEG")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / ".hidden.png")  # skipped: hidden
    (folder / "sub").mkdir()  # sub-folders are not searched
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "sub" / "inner.png")
    return folder


def predict(ckpt: Path, overrides: list[str], folder: Path, out: Path, *extra: str) -> dict:
    """Predict on ``folder`` with a dataset root that does not exist (and no synthetic fallback)."""
    cfg = compose_config(
        [*overrides, f"dataset.root={out / 'no-dataset'}", "dataset.synthetic=null", "mode=predict",
         f"ckpt={ckpt}", f"input={folder}", *extra],
        out,
    )  # fmt: skip
    execute(cfg)
    assert not (out / "no-dataset").exists()
    return json.loads((out / "metrics.json").read_text())


def check_run(metrics: dict, out: Path, caplog) -> None:
    assert metrics["status"] == "complete" and metrics["mode"] == "predict"
    assert metrics["n_frames"] == len(FRAMES) and sorted(metrics["frames"]) == sorted(FRAMES)
    assert not any(k.startswith(("test/", "val/")) for k in metrics)  # no ground truth, no metrics
    for name in SKIPPED:
        assert name in caplog.text, name  # each skipped file is named in the log
    assert ".hidden.png" not in metrics["frames"] and "inner.png" not in metrics["frames"]
    assert len(pd.read_csv(out / "per_frame.csv")) == len(FRAMES)
    assert list((out / "figures").glob("*.png"))  # overlay figures
    assert not list(out.rglob(".*.tmp"))  # atomic writes left nothing half-written


def test_segmentation_masks_native_and_equal_to_the_evaluator(checkpoints, frames, tmp_path, caplog):
    ckpt, overrides = checkpoints("segmentation", "resnet50")
    # The frames through the evaluation path, computed here: decode_pair's resize, normalisation, the task's
    # predict on one batch of the frames in name order (as the loader batches them: trainer.batch_size=4), then
    # SegmentationEvaluator's resize + threshold, written by the evaluator itself.
    cfg = compose_config(overrides)
    task = instantiate_checked(cfg.task, _recursive_=False)
    model = task.build_model(cfg.backbone, cfg.pretraining, cfg.frozen, cfg.paths.weights_dir)
    model.load_state_dict(read_run_checkpoint(ckpt)["model"])
    model.eval()
    names = sorted(FRAMES)
    images = []
    for name in names:
        width, height, _ = FRAMES[name]
        mask = tmp_path / f"{Path(name).stem}-mask.png"
        Image.fromarray(np.zeros((height, width), np.uint8)).save(mask)
        arrays = decode_pair(SegmentationItem(Path(name).stem, frames / name, mask), task.input_size)
        images.append(normalize(torch.from_numpy(arrays["image"].copy()).permute(2, 0, 1)))
    with torch.no_grad():
        logits = task.predict(model, {"image": torch.stack(images)})
    # A threshold at the median probability of one frame, so that its mask is neither empty nor full after one
    # epoch of training and the comparison below means something.
    width, height, _ = FRAMES[names[0]]
    probs = torch.sigmoid(torch.nn.functional.interpolate(logits[:1], size=(height, width), mode="bilinear"))
    threshold = float(probs.median())
    batch = {
        "target_native": [torch.zeros(FRAMES[n][1], FRAMES[n][0], dtype=torch.bool) for n in names],
        "meta": [{"name": Path(n).stem} for n in names],
    }
    evaluated = tmp_path / "evaluated"
    SegmentationEvaluator(threshold, save_dir=evaluated).process(batch, logits)

    with caplog.at_level(logging.INFO):
        metrics = predict(ckpt, overrides, frames, tmp_path / "predict", f"task.threshold={threshold!r}")
    check_run(metrics, tmp_path / "predict", caplog)
    out = tmp_path / "predict" / "predictions"
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{Path(n).stem}.png" for n in FRAMES)
    assert len(list((tmp_path / "predict" / "figures").glob("*.png"))) == 2  # trainer.num_figures
    for name in names:
        width, height, _ = FRAMES[name]
        with (
            Image.open(out / f"{Path(name).stem}.png") as ours,
            Image.open(evaluated / f"{Path(name).stem}.png") as ref,
        ):
            assert ours.size == (width, height) and ours.mode == "L" and ours.format == "PNG"
            assert set(np.unique(np.asarray(ours))) <= {0, 255}
            assert np.array_equal(np.asarray(ours), np.asarray(ref)), name
    with Image.open(out / f"{Path(names[0]).stem}.png") as first:
        assert set(np.unique(np.asarray(first))) == {0, 255}  # a mask with both classes was compared


def test_depth_tiffs_native_16_bit(checkpoints, frames, tmp_path, caplog):
    ckpt, overrides = checkpoints("depth", "resnet50")
    with caplog.at_level(logging.INFO):
        metrics = predict(ckpt, overrides, frames, tmp_path / "predict")
    check_run(metrics, tmp_path / "predict", caplog)
    out = tmp_path / "predict" / "predictions"
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{Path(n).stem}.tiff" for n in FRAMES)
    for name, (width, height, _) in FRAMES.items():
        with Image.open(out / f"{Path(name).stem}.tiff") as depth:
            assert depth.format == "TIFF" and depth.mode == "I;16" and depth.size == (width, height)
            values = np.asarray(depth)
            assert values.max() > 0  # the sigmoid output is in (0, 1): never all zero


@pytest.mark.parametrize("backbone", ["resnet50", "vit_b"])
def test_detection_boxes_in_native_pixels(checkpoints, frames, tmp_path, caplog, backbone):
    ckpt, overrides = checkpoints("detection", backbone)
    with caplog.at_level(logging.INFO):
        metrics = predict(ckpt, overrides, frames, tmp_path / "predict", "task.score_threshold=0.0")
    check_run(metrics, tmp_path / "predict", caplog)
    out = tmp_path / "predict" / "predictions"
    assert [p.name for p in out.iterdir()] == ["predicted_bboxes.json"]
    boxes = json.loads((out / "predicted_bboxes.json").read_text())
    assert sorted(boxes) == sorted(Path(n).stem for n in FRAMES)
    n_boxes = 0
    for name, (width, height, _) in FRAMES.items():
        entry = boxes[Path(name).stem]
        assert (entry["height"], entry["width"]) == (height, width)
        for box in entry["bbox"]:
            assert set(box) == {"label", "xmin", "ymin", "xmax", "ymax", "score"}
            assert 0 <= box["xmin"] <= box["xmax"] <= width and 0 <= box["ymin"] <= box["ymax"] <= height
            n_boxes += 1
    assert n_boxes > 0  # with score_threshold 0 an untrained detector still proposes boxes to check


def test_classification_csv(checkpoints, frames, tmp_path, caplog):
    ckpt, overrides = checkpoints("classification", "resnet50")
    with caplog.at_level(logging.INFO):
        metrics = predict(ckpt, overrides, frames, tmp_path / "predict")
    check_run(metrics, tmp_path / "predict", caplog)
    classes = list(read_run_checkpoint(ckpt)["task_state"]["classes"])
    table = pd.read_csv(tmp_path / "predict" / "predictions" / "predictions.csv")
    assert list(table.columns) == [
        "file",
        "predicted_id",
        "predicted",
        "confidence",
        *[f"p_{c}" for c in classes],
    ]
    assert sorted(table["file"]) == sorted(FRAMES)
    probs = table[[f"p_{c}" for c in classes]].to_numpy()
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert list(table["predicted"]) == [classes[i] for i in probs.argmax(axis=1)]
    assert (tmp_path / "predict" / "figures" / "examples.png").exists()


def test_missing_empty_and_colliding_folders_are_one_line_errors(checkpoints, tmp_path):
    ckpt, overrides = checkpoints("segmentation", "resnet50")
    with pytest.raises(ConfigError, match=r"^input=\S+absent: the folder does not exist"):
        predict(ckpt, overrides, tmp_path / "absent", tmp_path / "a")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.md").write_text("no frames here")
    with pytest.raises(ConfigError, match=r"^input=\S+empty holds no readable image .*1 other"):
        predict(ckpt, overrides, empty, tmp_path / "b")
    twins = tmp_path / "twins"
    twins.mkdir()
    for name in ("a.png", "a.JPG"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(
            twins / name, format="PNG" if name.endswith("png") else "JPEG"
        )
    with pytest.raises(ConfigError, match="a.JPG and a.png share the file stem"):
        predict(ckpt, overrides, twins, tmp_path / "c")
    for out in ("a", "b", "c"):
        assert not (tmp_path / out / "metrics.json").exists()
    with pytest.raises(ConfigError, match="read by mode=predict only"):
        execute(compose_config([*overrides, f"input={twins}"], tmp_path / "d"))
