"""Polyp detection on Kvasir-SEG boxes: Faster R-CNN losses, COCO mAP in the original image frame, box figures."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import timm
import torch
from matplotlib.patches import Rectangle
from omegaconf import DictConfig
from torch import nn
from torchvision import tv_tensors

from ssl4gie.data.detection import (
    IDENTITY_CANVAS,
    DetectionDataset,
    KvasirDetection,
    augment_on_device,
    from_canvas,
    to_canvas,
)
from ssl4gie.data.device_views import decode_frames
from ssl4gie.data.frames import FrameDataset
from ssl4gie.data.readers import open_image
from ssl4gie.errors import ConfigError
from ssl4gie.metrics.detection import DetectionMetricAccumulator
from ssl4gie.models.backbone import create_backbone, patch_size
from ssl4gie.models.detection import (
    POS_EMBEDS,
    PYRAMID_NORMS,
    global_attention_blocks,
    resnet_fpn_detector,
    vit_detector,
    vit_input_size,
)
from ssl4gie.models.pretrained import load_pretrained, resolve_backbone
from ssl4gie.tasks.base import Evaluator, Task
from ssl4gie.utils.figures import save_figure
from ssl4gie.utils.io import write_json

log = logging.getLogger(__name__)

FROZEN_BN = ("auto", True, False)
# task.protocol: ssl4gie scores every detector in the original image's frame; study halves large images onto the
# ViT's canvas and scores a ViT in that canvas frame, as the study's `Object_detection/eval_detection.py`
PROTOCOLS = ("ssl4gie", "study")
PREDICTIONS_FILE = "predicted_bboxes.json"
GT_COLOUR, PRED_COLOUR = "yellow", "lime"  # the study's colours (`predict_detection.py`)


def resolve_frozen_bn(option: str | bool, pretrained: bool) -> bool:
    """``task.frozen_bn`` -> whether the ResNet's BatchNorms are frozen (``frozen=true`` freezes them anyway).

    ``auto`` follows torchvision (FrozenBatchNorm only for pretrained backbones): the statistics of a pretrained
    encoder are worth keeping, while a randomly initialised one needs trainable normalisation.
    """
    if option not in FROZEN_BN:
        raise ConfigError(f"task.frozen_bn={option!r} is not valid; valid: auto, true, false")
    return pretrained if option == "auto" else bool(option)


class DetectionTask(Task):
    """Faster R-CNN finetuning, as in the study's ``Object_detection/`` train and eval scripts.

    ResNet backbones see images at native size (resized inside the model to ``min_size``/``max_size``); ViT
    backbones see a ``canvas_size`` square canvas. Predictions and metrics are in the original image frame for
    both (the study's ``eval_detection.py`` scored ViTs in the canvas frame).

    ``frozen_bn`` (ResNet only): ``auto`` = FrozenBatchNorm for pretrained rows and for ``frozen=true``, trainable
    BatchNorm for ``pretraining=random`` (torchvision's current rule); ``true`` = always frozen (the study's
    behaviour on torchvision 0.10, which leaves a random-init detector without normalisation); ``false`` =
    trainable unless ``frozen=true``.

    ``pyramid_norm`` / ``pos_embed`` (ViT only): ``channel`` / ``resample`` = channel-wise LayerNorm2d pyramid and a
    table resampled once to the canvas; ``study`` / ``study`` = the study's whole-(C,H,W) LayerNorm pyramid (valid
    at one canvas only) and its 1×(1+G²)×C table interpolated to the canvas on every forward (the study's
    ``Models/models.py``).
    """

    def __init__(
        self,
        name: str,
        monitor: str,
        monitor_mode: str,
        augment: bool,
        canvas_size: int,
        window_size: int,
        min_size: int,
        max_size: int,
        frozen_bn: str | bool,
        fpn_channels: int,
        score_threshold: float,
        detections_per_img: int,
        rois_per_image: int,
        score_threshold_figures: float,
        global_blocks: list[int] | None = None,
        input_size: int | None = None,
        pyramid_norm: str = "channel",
        pos_embed: str = "resample",
        protocol: str = "ssl4gie",
    ) -> None:
        if input_size is not None:
            raise ConfigError(
                f"task.input_size={input_size}: detection has no fixed input size; set task.min_size/max_size "
                f"(ResNet) or task.canvas_size (ViT) instead"
            )
        resolve_frozen_bn(frozen_bn, pretrained=False)  # reject an invalid value before any data is read
        for key, value, valid in (
            ("pyramid_norm", pyramid_norm, PYRAMID_NORMS),
            ("pos_embed", pos_embed, POS_EMBEDS),
            ("protocol", protocol, PROTOCOLS),
        ):
            if value not in valid:
                raise ConfigError(f"task.{key}={value!r} is not valid; valid: {', '.join(valid)}")
        self.pyramid_norm, self.pos_embed, self.protocol = pyramid_norm, pos_embed, protocol
        for key, value in (
            ("canvas_size", canvas_size),
            ("window_size", window_size),
            ("min_size", min_size),
        ):
            if int(value) < 1:
                raise ConfigError(f"task.{key}={value} must be a positive number of pixels/tokens")
        if max_size < min_size:
            raise ConfigError(f"task.max_size={max_size} must be at least task.min_size={min_size}")
        self.name, self.monitor, self.monitor_mode, self.input_size = name, monitor, monitor_mode, None
        self.augment, self.canvas_size, self.window_size = augment, int(canvas_size), int(window_size)
        self.min_size, self.max_size, self.frozen_bn = int(min_size), int(max_size), frozen_bn
        self.fpn_channels = int(fpn_channels)
        self.global_blocks = None if global_blocks is None else [int(i) for i in global_blocks]
        # Faster R-CNN head options, the same for both detectors
        self.head = {
            "score_threshold": float(score_threshold),
            "detections_per_img": int(detections_per_img),
            "rois_per_image": int(rois_per_image),
        }
        self.figure_threshold = float(score_threshold_figures)
        # Set by build_model: canvas_size for ViTs, None (images at native size) for ResNets; the structural
        # options of the detector built (checked against a checkpoint's in eval/predict mode).
        self.canvas: int | None = None
        self._structure: dict = {}
        self.image_norm: dict = {}  # the row's input normalisation (None: ImageNet's), set by build_model
        self.augment_on_device = False  # set by the run from trainer.gpu_augment (on CUDA by default)

    # ------------------------------------------------------------------------------------------------ model
    def build_model(
        self, backbone: DictConfig, pretraining: DictConfig, frozen: bool, weights_dir: str
    ) -> nn.Module:
        builders = {"resnet": self._resnet, "vit": self._vit}
        if backbone.family not in builders:
            raise ConfigError(
                f"task=detection has no detector for backbone family '{backbone.family}' "
                f"(backbone={backbone.name}); known families: {sorted(builders)}"
            )
        backbone = resolve_backbone(backbone, pretraining, weights_dir)
        # The ViT's position embedding is built (and pretrained weights resampled) for its input: the canvas, or
        # for a patch other than 16 px the canvas resized to one token per 16 px (vit_input_size); ResNets take
        # any size and ignore the value. The study's variant keeps the table at the pretraining size instead.
        size = self.canvas_size
        if backbone.family == "vit":
            size = vit_input_size(self.canvas_size, patch_size(backbone))
            if self.pos_embed == "study":
                size = timm.get_pretrained_cfg(backbone.timm_name).input_size[-1]
        encoder = create_backbone(backbone, size)
        load_pretrained(encoder, pretraining, backbone, weights_dir, size)
        normalize = pretraining.get("normalize") or {}
        self.image_norm = {"image_mean": normalize.get("mean"), "image_std": normalize.get("std")}
        return builders[backbone.family](encoder, pretraining, frozen)

    def _resnet(self, encoder: nn.Module, pretraining: DictConfig, frozen: bool) -> nn.Module:
        frozen_bn = resolve_frozen_bn(self.frozen_bn, pretraining.pretrained)
        if frozen_bn and not pretraining.pretrained:
            log.warning(
                "task.frozen_bn=true with pretraining=random: FrozenBatchNorm keeps the random-init statistics "
                "(mean 0, variance 1, weight 1, bias 0), so the detector trains without normalisation, as the "
                "study's random-init detector did (torchvision 0.10); residual branches stay active "
                "(torchvision's initialisation). task.frozen_bn=auto gives it trainable BatchNorm"
            )
        log.info(
            "ResNet detector: %s BatchNorm (task.frozen_bn=%s)",
            "frozen" if frozen_bn or frozen else "trainable",
            self.frozen_bn,
        )
        self.canvas = None
        self._structure = {"fpn_channels": self.fpn_channels, "frozen_bn": bool(frozen_bn or frozen)}
        return resnet_fpn_detector(
            encoder,
            frozen=frozen,
            frozen_bn=frozen_bn,
            fpn_channels=self.fpn_channels,
            min_size=self.min_size,
            max_size=self.max_size,
            **self.image_norm,
            **self.head,
        )

    def _vit(self, encoder: nn.Module, pretraining: DictConfig, frozen: bool) -> nn.Module:
        self.canvas = self.canvas_size
        depth = len(encoder.blocks)
        self._structure = {
            "canvas_size": self.canvas_size,
            "window_size": self.window_size,
            "global_blocks": global_attention_blocks(depth)
            if self.global_blocks is None
            else sorted(self.global_blocks),
            "fpn_channels": self.fpn_channels,
            "pyramid_norm": self.pyramid_norm,
            "pos_embed": self.pos_embed,
        }
        return vit_detector(
            encoder,
            canvas_size=self.canvas_size,
            window_size=self.window_size,
            global_blocks=self.global_blocks,
            frozen=frozen,
            fpn_channels=self.fpn_channels,
            pyramid_norm=self.pyramid_norm,
            pos_embed=self.pos_embed,
            **self.image_norm,
            **self.head,
        )

    def input_label(self) -> str:
        """The ViT's canvas, or the ResNet's short side / longest side."""
        return f"canvas {self.canvas}²" if self.canvas is not None else f"{self.min_size}/{self.max_size}"

    def structure(self) -> dict:
        return {"detector": dict(self._structure)}

    def use_study_model(self) -> None:
        """The study's detectors as they ran: always frozen BatchNorm (its random-init one included, as
        torchvision 0.10's ``fasterrcnn_resnet50_fpn`` always built it); for the ViT the whole-map LayerNorm
        pyramid and the per-forward interpolated position table."""
        if self.frozen_bn is not True:
            log.info(
                "the study's detector: frozen BatchNorm (task.frozen_bn=true instead of %s)", self.frozen_bn
            )
        if (self.pyramid_norm, self.pos_embed) != ("study", "study"):
            log.info(
                "the study's detector on a ViT: task.pyramid_norm=study, task.pos_embed=study (instead of %s, %s)",
                self.pyramid_norm,
                self.pos_embed,
            )
        self.frozen_bn, self.pyramid_norm, self.pos_embed = True, "study", "study"

    # ------------------------------------------------------------------------------------------------- data
    def build_datasets(
        self, reader: KvasirDetection, splits: list[str], cache_dir: str | None, progress: bool
    ) -> dict[str, DetectionDataset]:
        """Datasets per split; call after :meth:`build_model` (which decides native size vs canvas).

        Images are decoded per item (native sizes vary), so ``cache_dir`` is not used. With ``augment_on_device``
        the training workers only read the files, draw the augmentation's parameters and move the boxes; the
        device decodes and augments (:meth:`augment_batch`).
        """
        indices = reader.splits()
        return {
            s: DetectionDataset(
                reader,
                indices[s],
                train=(s == "train" and self.augment),
                canvas_size=self.canvas,
                canvas_rule="study" if self.protocol == "study" else "fit",
                device_augment=self.augment_on_device,
            )
            for s in splits
        }

    def augment_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Training samples of :meth:`DetectionDataset._device_sample`: decoded (one ``decode_jpeg`` call for the
        batch, nvJPEG on CUDA) and augmented on the device, image by image (sizes differ); the boxes were moved
        in the worker."""
        if "frame" not in batch:
            return batch
        names = [meta["image_path"] for meta in batch["meta"]]
        images = decode_frames(batch["frame"], batch["params"].device, names)
        augmented = [
            augment_on_device(image, params, geometry, meta["plan"])
            for image, params, geometry, meta in zip(
                images, batch["params"], batch["geometry"], batch["meta"], strict=True
            )
        ]
        rest = {k: v for k, v in batch.items() if k not in ("frame", "params", "geometry")}
        return {**rest, "image": augmented}

    # ------------------------------------------------------------------------------------------- train/eval
    def training_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Sum of torchvision's four Faster R-CNN losses (RPN objectness/box, classifier, box), in fp32."""
        losses = model(list(batch["image"]), batch["target"])
        return {"loss": sum(loss.float() for loss in losses.values())}

    def predict(self, model: nn.Module, batch: dict[str, Any]) -> list[dict[str, torch.Tensor]]:
        """Post-processed detections (score > ``score_threshold``, at most ``detections_per_img``), with boxes
        mapped back to each original image's pixel frame (``boxes``) and as the model saw them (``input_boxes``:
        the canvas frame of a ViT, where the study scored them)."""
        detections = model(list(batch["image"]))
        return [
            {
                "boxes": from_canvas(d["boxes"].float(), meta["canvas"], meta["orig_size"]),
                "input_boxes": d["boxes"].float(),
                "scores": d["scores"].float(),
                "labels": d["labels"],
            }
            for d, meta in zip(detections, batch["meta"], strict=True)
        ]

    def evaluator(self, keep: int = 0, save_dir: Path | None = None) -> Evaluator:
        # task.protocol=study scores a ViT's boxes in its canvas frame, as the study's eval_detection.py
        frame = "input" if self.protocol == "study" and self.canvas is not None else "native"
        return DetectionEvaluator(self.figure_threshold, keep, save_dir, frame)

    def frame_dataset(self, paths: list[Path]) -> DetectionFrames:
        return DetectionFrames(paths, self.canvas, "study" if self.protocol == "study" else "fit")

    def frame_predictor(self, save_dir: Path, keep: int = 0) -> Evaluator:
        return DetectionFramePredictor(self.figure_threshold, save_dir, keep)

    def draw_frames(self, kept: list[dict], folder: Path) -> list[Path]:
        return self.draw(kept, folder)

    def draw(self, kept: list[dict], folder: Path) -> list[Path]:
        """Ground truth in yellow and predictions scored above ``score_threshold_figures`` in green, on the
        original full-resolution image."""
        return [
            save_figure(box_figure(item, self.figure_threshold), folder / f"{item['meta']['name']}.png")
            for item in kept
        ]


class DetectionFrames(FrameDataset):
    """Frames as the detector's evaluation images: float [0, 1] at native size (ResNet), or placed on the
    ``canvas_size`` canvas (ViT, :func:`to_canvas`); ``meta["canvas"]`` maps boxes back."""

    def __init__(self, paths: list[Path], canvas_size: int | None, canvas_rule: str = "fit") -> None:
        super().__init__(paths)
        self.canvas_size, self.canvas_rule = canvas_size, canvas_rule

    def sample(self, image, meta: dict) -> dict:
        pixels = tv_tensors.Image(torch.from_numpy(np.array(image)).permute(2, 0, 1))
        canvas = dict(IDENTITY_CANVAS)
        if self.canvas_size is not None:
            none = tv_tensors.BoundingBoxes(torch.zeros(0, 4), format="XYXY", canvas_size=meta["orig_size"])
            pixels, _, canvas = to_canvas(pixels, none, self.canvas_size, self.canvas_rule)
        meta["canvas"] = canvas
        return {"image": pixels.as_subclass(torch.Tensor).float() / 255.0, "meta": meta}


class DetectionFramePredictor(Evaluator):
    """Collects every frame's boxes (original pixels) and writes them in ``compute`` as one
    ``predicted_bboxes.json``: ``{stem: {"height", "width", "bbox": [box_entry, ...]}}``, as
    :class:`DetectionEvaluator` writes in predict mode."""

    def __init__(self, figure_threshold: float, save_dir: Path, keep: int = 0) -> None:
        super().__init__(keep, save_dir)
        self.figure_threshold = figure_threshold
        self.predictions: dict[str, dict] = {}
        self.rows: list[dict] = []

    def process(self, batch: dict[str, Any], outputs: list[dict[str, torch.Tensor]]) -> None:
        for pred, meta in zip(outputs, batch["meta"], strict=True):
            boxes, scores = pred["boxes"].cpu().numpy(), pred["scores"].cpu().numpy()
            height, width = meta["orig_size"]
            self.predictions[meta["name"]] = {
                "height": int(height),
                "width": int(width),
                "bbox": [box_entry(box, score) for box, score in zip(boxes, scores, strict=True)],
            }
            shown = int((scores > self.figure_threshold).sum())
            self.rows.append({"file": meta["file"], "height": height, "width": width, "boxes": len(boxes),
                              f"boxes_above_{self.figure_threshold:g}": shown})  # fmt: skip
            if len(self.kept) < self.keep:
                self.kept.append({"meta": meta, "target": None, "boxes": boxes, "scores": scores})

    def compute(self) -> tuple[dict[str, float], list[dict]]:
        path = write_json(self.save_dir / PREDICTIONS_FILE, self.predictions)
        log.info("wrote the predicted boxes of %d frames to %s", len(self.predictions), path)
        return {}, self.rows


class DetectionEvaluator(Evaluator):
    """COCO mAP (``map``, ``map_50``, ``map_75``) over a split in the original image frame; in predict mode also
    writes ``predicted_bboxes.json`` (the structure of ``kavsir_bboxes.json`` plus a ``score`` per box) to
    ``save_dir``."""

    def __init__(
        self, figure_threshold: float, keep: int = 0, save_dir: Path | None = None, frame: str = "native"
    ) -> None:
        """``frame``: where mAP is computed: ``native`` (the original image's pixels) or ``input`` (the frame the
        model saw: a ViT's canvas; the study's protocol). Figures and saved boxes are in the original frame."""
        super().__init__(keep, save_dir)
        self.metrics = DetectionMetricAccumulator(score_threshold=figure_threshold)
        self.predictions: dict[str, dict] = {}
        self.frame = frame

    def process(self, batch: dict[str, Any], outputs: list[dict[str, torch.Tensor]]) -> None:
        metas, targets = batch["meta"], batch["target_native"]
        if self.frame == "input":
            scored = [{**o, "boxes": o["input_boxes"]} for o in outputs]
            self.metrics.update(scored, batch["target"], [m["name"] for m in metas])
        else:
            self.metrics.update(outputs, targets, [m["name"] for m in metas])
        for pred, target, meta in zip(outputs, targets, metas, strict=True):
            boxes, scores = pred["boxes"].cpu().numpy(), pred["scores"].cpu().numpy()
            if len(self.kept) < self.keep:
                self.kept.append(
                    {"meta": meta, "target": target["boxes"].cpu().numpy(), "boxes": boxes, "scores": scores}
                )
            if self.save_dir is not None:
                height, width = meta["orig_size"]
                self.predictions[meta["name"]] = {
                    "height": int(height),
                    "width": int(width),
                    "bbox": [box_entry(box, score) for box, score in zip(boxes, scores, strict=True)],
                }

    def compute(self) -> tuple[dict[str, float], list[dict]]:
        metrics, rows = self.metrics.compute()
        if self.save_dir is not None:
            path = write_json(self.save_dir / PREDICTIONS_FILE, self.predictions)
            log.info("wrote the predicted boxes of %d images to %s", len(self.predictions), path)
        return metrics, rows


def box_entry(box: np.ndarray, score: float) -> dict:
    """One predicted box as in ``kavsir_bboxes.json`` (float pixel edges), plus its score."""
    coords = {key: round(float(v), 2) for key, v in zip(("xmin", "ymin", "xmax", "ymax"), box, strict=True)}
    return {"label": "polyp", **coords, "score": round(float(score), 4)}


def box_figure(item: dict, threshold: float) -> plt.Figure:
    """A matplotlib figure of one evaluated image: ground truth (yellow) and predictions > ``threshold`` (green)."""
    meta = item["meta"]
    image = np.asarray(open_image(Path(meta["image_path"]), "RGB"))
    height, width = image.shape[:2]
    fig, ax = plt.subplots(figsize=(8, 8 * height / width))
    ax.imshow(image)
    shown = item["scores"] > threshold
    line = max(1.5, width / 400)
    target = item["target"] if item["target"] is not None else np.zeros((0, 4))  # None: a frame without truth
    for boxes, colour in ((target, GT_COLOUR), (item["boxes"][shown], PRED_COLOUR)):
        for x0, y0, x1, y1 in boxes:
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=colour, linewidth=line))
    scores = ", ".join(f"{s:.2f}" for s in item["scores"][shown]) or "none"
    truth = "" if item["target"] is None else f"ground truth (yellow): {len(target)}   "
    ax.set_title(f"{meta['name']}\n{truth}predictions > {threshold:g} (green), scores: {scores}", fontsize=9)
    ax.axis("off")
    fig.tight_layout()
    return fig
