"""Kvasir-SEG box reader (real layout, clear errors), the study's box augmentation and the ViT canvas mapping."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from ssl4gie.data.detection import (
    DetectionDataset,
    DetectionTrainTransform,
    KvasirDetection,
    from_canvas,
    rot90,
    to_canvas,
)
from ssl4gie.data.segmentation import KvasirSeg
from ssl4gie.data.splits import study_split
from ssl4gie.data.synthetic import write_kvasir_seg
from ssl4gie.errors import DatasetError


@pytest.fixture
def kvasir(tmp_path):
    return write_kvasir_seg(tmp_path / "Kvasir-SEG", n=6, seed=2, size_range=(48, 96))


def _edit_boxes(root, edit):
    path = root / "kavsir_bboxes.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    return data


def test_reader_follows_the_published_layout_and_the_segmentation_split(kvasir):
    reader = KvasirDetection(str(kvasir), "kvasir_det")
    boxes = json.loads((kvasir / "kavsir_bboxes.json").read_text())
    assert [item.name for item in reader.items] == sorted(boxes)
    for item in reader.items:
        expected = [[b[k] for k in ("xmin", "ymin", "xmax", "ymax")] for b in boxes[item.name]["bbox"]]
        np.testing.assert_array_equal(item.boxes, np.asarray(expected, dtype=np.float32))
        assert item.size == (boxes[item.name]["height"], boxes[item.name]["width"])
    assert reader.splits() == study_split(6)
    segmentation = KvasirSeg(str(kvasir), "kvasir_seg")
    assert [it.name for it in segmentation.items] == [
        it.name for it in reader.items
    ]  # same split, same images


def test_the_study_file_name_is_accepted(kvasir):
    (kvasir / "kavsir_bboxes.json").rename(kvasir / "bounding-boxes.json")
    assert KvasirDetection(str(kvasir), "kvasir_det").box_file.name == "bounding-boxes.json"


def test_synthetic_data_is_written_when_asked(tmp_path):
    reader = KvasirDetection(str(tmp_path / "new"), "kvasir_det", synthetic={"n": 3, "seed": 0})
    assert len(reader.items) == 3 and (tmp_path / "new" / "kavsir_bboxes.json").is_file()


def _first(data):
    return next(iter(sorted(data)))


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda d: d.pop(_first(d)), "has no entry '.*' in the box file .*kavsir_bboxes.json"),
        (
            lambda d: d[_first(d)]["bbox"][0].update(xmax=d[_first(d)]["width"] + 2),
            "outside the .* image by more",
        ),
        (lambda d: d[_first(d)]["bbox"][0].update(ymin=-3), "outside the .* image by more than 1 px"),
        (lambda d: d[_first(d)]["bbox"][0].update(xmax=d[_first(d)]["bbox"][0]["xmin"]), "need xmax > xmin"),
        (lambda d: d[_first(d)]["bbox"][0].pop("ymax"), "expected numeric keys xmin, ymin, xmax, ymax"),
        (lambda d: d[_first(d)].pop("bbox"), 'has no "bbox" list'),
    ],
    ids=["no-entry", "beyond-width", "negative", "empty-box", "missing-key", "no-bbox"],
)
def test_bad_box_files_are_errors_that_name_the_file(kvasir, edit, message):
    _edit_boxes(kvasir, edit)
    with pytest.raises(DatasetError, match=message) as error:
        KvasirDetection(str(kvasir), "kvasir_det")
    assert "kavsir_bboxes.json" in str(error.value)


def test_missing_root_and_missing_box_file(kvasir, tmp_path):
    with pytest.raises(DatasetError, match="Kvasir-SEG not found: .*nowhere does not exist"):
        KvasirDetection(str(tmp_path / "nowhere"), "kvasir_det")
    (kvasir / "kavsir_bboxes.json").unlink()
    with pytest.raises(
        DatasetError, match="has no box file: expected kavsir_bboxes.json or bounding-boxes.json"
    ):
        KvasirDetection(str(kvasir), "kvasir_det")
    (kvasir / "kavsir_bboxes.json").write_text("{not json")
    with pytest.raises(DatasetError, match="cannot read box file .*kavsir_bboxes.json"):
        KvasirDetection(str(kvasir), "kvasir_det")


def test_boxes_one_pixel_past_the_border_are_clipped_with_a_warning(kvasir, caplog):
    def nudge(d):
        entry = d[_first(d)]
        entry["bbox"][0].update(xmax=entry["width"] + 1, ymin=-1)

    data = _edit_boxes(kvasir, nudge)
    with caplog.at_level(logging.WARNING):
        reader = KvasirDetection(str(kvasir), "kvasir_det")
    entry = data[_first(data)]
    assert reader.items[0].boxes[0, 2] == entry["width"] and reader.items[0].boxes[0, 1] == 0
    assert "clipped 1 box(es)" in caplog.text


# --------------------------------------------------------------------------------------------- box geometry
def _marked(height=30, width=50, box=(7, 4, 19, 13)):
    """An image whose pixels inside ``box`` (pixel edges) are 255, others 0, and that box."""
    image = torch.zeros(1, height, width, dtype=torch.uint8)
    x0, y0, x1, y1 = box
    image[:, y0:y1, x0:x1] = 255
    return tv_tensors.Image(image), tv_tensors.BoundingBoxes(
        torch.tensor([box], dtype=torch.float32), format="XYXY", canvas_size=(height, width)
    )


def _tight_box(image):
    ys, xs = torch.nonzero(image[0] > 127, as_tuple=True)
    return [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]


def test_rot90_is_counter_clockwise_and_follows_the_study_formulas():
    image, boxes = _marked()
    width = 50
    out, rotated = rot90(image, boxes)
    xmin, ymin, xmax, ymax = boxes[0].tolist()
    assert rotated[0].tolist() == [ymin, width - xmax, ymax, width - xmin]  # the study's rot90 box rule
    assert rotated.canvas_size == (50, 30) and out.shape == (1, 50, 30)
    assert _tight_box(out) == rotated[0].tolist()  # the pixels moved with the box
    corner = torch.zeros(1, 2, 3)
    corner[0, 0, 2] = 1  # top-right pixel goes to the top-left under a counter-clockwise turn
    no_boxes = tv_tensors.BoundingBoxes(torch.zeros(0, 4), format="XYXY", canvas_size=(2, 3))
    turned, _ = rot90(corner, no_boxes)
    assert turned[0, 0, 0] == 1 and turned.sum() == 1


def test_flips_follow_the_study_formulas():
    image, boxes = _marked()
    height, width = 30, 50
    xmin, ymin, xmax, ymax = boxes[0].tolist()
    flipped = F.horizontal_flip(boxes)
    assert flipped[0].tolist() == [width - xmax, ymin, width - xmin, ymax]
    assert _tight_box(F.horizontal_flip(image)) == flipped[0].tolist()
    flipped = F.vertical_flip(boxes)
    assert flipped[0].tolist() == [xmin, height - ymax, xmax, height - ymin]
    assert _tight_box(F.vertical_flip(image)) == flipped[0].tolist()


@pytest.mark.parametrize("p", [0.0, 1.0])
def test_train_transform_applies_rot90_then_flips(p):
    torch.manual_seed(0)
    image, boxes = _marked()
    out, moved = DetectionTrainTransform(p=p)(tv_tensors.Image(image.expand(3, -1, -1).clone()), boxes)
    expected = boxes
    if p:  # rot90 (W = 50), then hflip and vflip on the rotated 30-wide, 50-high image
        expected = F.vertical_flip(F.horizontal_flip(rot90(image, boxes)[1]))
    assert moved[0].tolist() == expected[0].tolist()
    assert tuple(out.shape[-2:]) == moved.canvas_size


@pytest.mark.parametrize("size", [(100, 200), (40, 30), (64, 64)])  # shrink; pad only; exact fit
def test_canvas_mapping_round_trip(size):
    height, width = size
    image, boxes = _marked(height, width, box=(5, 6, 25, 30))
    canvas, moved, mapping = to_canvas(image, boxes, 64)
    assert canvas.shape == (1, 64, 64)
    scale = min(1.0, 64 / height, 64 / width)
    new_h, new_w = round(height * scale), round(width * scale)
    left, top = mapping["offset"]
    assert (left, top) == ((64 - new_w) // 2, (64 - new_h) // 2)
    assert mapping["scale"] == (new_w / width, new_h / height)
    inside = torch.zeros(64, 64, dtype=torch.bool)
    inside[top : top + new_h, left : left + new_w] = True
    assert canvas[0][~inside].eq(0).all()  # zero padding around the centred image
    back = from_canvas(moved.as_subclass(torch.Tensor), mapping, (height, width))
    torch.testing.assert_close(back, boxes.as_subclass(torch.Tensor), atol=1e-4, rtol=0)
    if scale == 1.0:  # unscaled: the marked pixels sit exactly in the shifted box
        assert _tight_box(canvas) == moved[0].tolist()


def test_dataset_samples(kvasir):
    reader = KvasirDetection(str(kvasir), "kvasir_det")
    native = DetectionDataset(reader, [0, 1], train=False, canvas_size=None)[1]
    item = reader.items[1]
    assert native["image"].shape == (3, *item.size) and native["image"].dtype == torch.float32
    assert native["image"].min() >= 0 and native["image"].max() <= 1
    torch.testing.assert_close(native["target"]["boxes"], torch.from_numpy(item.boxes))
    assert native["target"]["labels"].dtype == torch.int64 and native["target"]["labels"].eq(1).all()
    assert native["meta"] == {
        "name": item.name,
        "index": 1,
        "image_path": str(item.image),
        "orig_size": item.size,
        "canvas": {"scale": (1.0, 1.0), "offset": (0, 0)},
    }
    torch.testing.assert_close(native["target_native"]["boxes"], native["target"]["boxes"])

    train = DetectionDataset(reader, [0, 1], train=True, canvas_size=64)[0]
    assert train["image"].shape == (3, 64, 64) and "target_native" not in train
    boxes = train["target"]["boxes"]
    assert (boxes[:, 2:] > boxes[:, :2]).all() and boxes.min() >= 0 and boxes.max() <= 64


# ------------------------------------------------------------------------------------ augmentation on the device
def _study_reference(image: torch.Tensor, params: np.ndarray, geometry, canvas_size, rule):
    """The worker path's image with these parameters: the study's jitter through PIL (uint8), the separable 25-tap
    blur in float then rounded, rot90 / flips, the canvas (as DetectionTrainTransform and to_canvas do it)."""
    from PIL import Image

    from ssl4gie.data.device_views import COLUMN

    pil = Image.fromarray(image.permute(1, 2, 0).numpy())
    steps = [
        lambda i: F.adjust_brightness(i, float(params[COLUMN["brightness"]])),
        lambda i: F.adjust_contrast(i, float(params[COLUMN["contrast"]])),
        lambda i: F.adjust_saturation(i, float(params[COLUMN["saturation"]])),
        lambda i: F.adjust_hue(i, float(params[COLUMN["hue"]])),
    ]
    for k in range(4):
        pil = steps[int(params[COLUMN[f"order{k}"]])](pil)
    x = F.pil_to_tensor(pil).float()
    sigma = float(params[COLUMN["sigma"]])
    x = (
        F.gaussian_blur(F.gaussian_blur(x, [25, 1], [sigma, sigma]), [1, 25], [sigma, sigma])
        .round()
        .clamp(0, 255)
    )
    x = x.to(torch.uint8)
    rotate, hflip, vflip = geometry
    if rotate:
        x = torch.rot90(x, 1, dims=(-2, -1))
    if hflip:
        x = x.flip(-1)
    if vflip:
        x = x.flip(-2)
    if canvas_size is not None:
        none = tv_tensors.BoundingBoxes(torch.zeros(0, 4), format="XYXY", canvas_size=tuple(x.shape[-2:]))
        x = to_canvas(tv_tensors.Image(x), none, canvas_size, rule)[0].as_subclass(torch.Tensor)
    return x.float() / 255


@pytest.mark.parametrize(("canvas_size", "rule"), [(None, "fit"), (64, "fit"), (64, "study")])
def test_device_augmentation_equals_the_worker_path_with_the_same_draws(kvasir, canvas_size, rule):
    """Workers read the bytes, draw the study's jitter, blur and geometry and move the boxes; the device decodes and
    augments. Same boxes as the worker transform exactly; same pixels up to the worker path's arithmetic (mean at
    most 2.5 grey levels, 99 % of the pixels within 6): PIL truncates to uint8 after each of the four colour steps,
    half a level down on average each time, and the blur rounds once more; the device keeps floats."""
    from PIL import Image

    from ssl4gie.data.collate import collate
    from ssl4gie.data.detection import augment_on_device
    from ssl4gie.data.device_views import decode_frames

    reader = KvasirDetection(str(kvasir), "kvasir_det")
    dataset = DetectionDataset(reader, list(range(6)), True, canvas_size, rule, device_augment=True)
    torch.manual_seed(0)
    batch = collate([dataset[i] for i in range(6)])
    assert isinstance(batch["frame"], list) and batch["frame"][0].ndim == 1  # bytes, not pixels
    images = decode_frames(batch["frame"], torch.device("cpu"), None)
    seen = set()
    for i, item in enumerate(dataset.items):
        geometry = batch["geometry"][i]
        seen.add(tuple(geometry))
        boxes = tv_tensors.BoundingBoxes(torch.from_numpy(item.boxes), format="XYXY", canvas_size=item.size)
        if geometry[0]:
            boxes = rot90(torch.zeros(1, *item.size), boxes)[1]
        boxes = F.horizontal_flip(boxes) if geometry[1] else boxes
        boxes = F.vertical_flip(boxes) if geometry[2] else boxes
        if canvas_size is not None:
            none = torch.zeros(1, *boxes.canvas_size)
            boxes = to_canvas(none, boxes, canvas_size, rule)[1]
        torch.testing.assert_close(batch["target"][i]["boxes"], boxes.as_subclass(torch.Tensor).float())
        out = augment_on_device(images[i], batch["params"][i], geometry, batch["meta"][i]["plan"])
        pixels = torch.from_numpy(np.array(Image.open(item.image).convert("RGB")))
        reference = _study_reference(
            pixels.permute(2, 0, 1), batch["params"][i].numpy(), geometry, canvas_size, rule
        )
        assert out.shape == reference.shape and out.dtype == torch.float32
        diff = (out - reference).abs() * 255
        assert diff.mean() <= 2.5 and diff.quantile(0.99) <= 6, (i, diff.mean(), diff.max())
        if canvas_size is not None:
            mapping = batch["meta"][i]["canvas"]
            back = from_canvas(batch["target"][i]["boxes"], mapping, item.size)
            assert (back[:, 2:] <= torch.tensor([item.size[1], item.size[0]]) + 1e-3).all()
    assert len(seen) > 1  # the geometry is drawn, not fixed


def test_device_samples_draw_the_studys_parameters(kvasir):
    """ColorJitter(0.4, 0.5, 0.25, 0.01) and blur σ ~ U[0.001, 2] on every image; rot90 and both flips at p 0.5."""
    from scipy import stats

    from ssl4gie.data.device_views import COLUMN

    reader = KvasirDetection(str(kvasir), "kvasir_det")
    dataset = DetectionDataset(reader, [0], True, None, device_augment=True)
    dataset.items = dataset.items * 1500  # one image, many draws (only the draws are looked at)
    dataset.indices = dataset.indices * 1500
    torch.manual_seed(0)
    samples = [dataset[i] for i in range(1500)]
    params = np.stack([s["params"].numpy() for s in samples])
    geometry = np.stack([s["geometry"] for s in samples])
    assert (params[:, COLUMN["jitter"]] == 1).all() and (params[:, COLUMN["blur"]] == 1).all()
    for name, (lo, hi) in {
        "brightness": (0.6, 1.4), "contrast": (0.5, 1.5), "saturation": (0.75, 1.25), "hue": (-0.01, 0.01),
        "sigma": (0.001, 2.0),
    }.items():  # fmt: skip
        assert stats.kstest(params[:, COLUMN[name]], stats.uniform(lo, hi - lo).cdf).pvalue > 1e-3, name
    for step in range(3):
        assert stats.binomtest(int(geometry[:, step].sum()), len(geometry), 0.5).pvalue > 1e-3
