"""Binary polyp segmentation (Kvasir-SEG, CVC-ClinicDB): soft Dice loss, per-image metrics at native resolution."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig
from PIL import Image
from torch import nn

from ssl4gie.data.frames import FrameDataset
from ssl4gie.data.readers import open_image
from ssl4gie.data.segmentation import SegmentationDataset
from ssl4gie.data.transforms import SegmentationTrainTransform, normalize
from ssl4gie.errors import ConfigError
from ssl4gie.metrics.segmentation import PROTOCOLS, SegmentationMetricAccumulator, binary_metrics
from ssl4gie.models.backbone import (
    EncoderDecoder,
    create_backbone,
    evenly_spaced_indices,
    feature_channels,
    input_norm,
)
from ssl4gie.models.dilation import dilate_like_smp
from ssl4gie.models.pretrained import load_pretrained, resolve_backbone
from ssl4gie.tasks.base import Evaluator, Task
from ssl4gie.tasks.losses import soft_dice_loss
from ssl4gie.utils.figures import prediction_panels, save_figure, segmentation_panels
from ssl4gie.utils.io import atomic_path

log = logging.getLogger(__name__)


def build_dense_model(
    decoders: DictConfig,
    task: str,
    input_size: int,
    backbone: DictConfig,
    pretraining: DictConfig,
    frozen: bool,
    weights_dir: str,
) -> EncoderDecoder:
    """Encoder from timm + the task's decoder for the backbone's family, built from the encoder's feature shapes
    (channels and token grid: any ViT width, patch size or register count, no per-backbone branches); the row's
    ``pretraining.normalize`` re-normalises the inputs before the encoder.

    The family's decoder spec may name encoder stages to dilate as smp 0.3.2 does (``encoder_dilation``, e.g.
    ``{layer4: 2}``: every conv of layer4 at stride 1, dilation 2), applied before the features are measured.
    """
    if backbone.family not in decoders:
        raise ConfigError(
            f"task={task} has no decoder for backbone family '{backbone.family}' "
            f"(backbone={backbone.name}); known families: {sorted(decoders)}"
        )
    spec = decoders[backbone.family]
    backbone = resolve_backbone(backbone, pretraining, weights_dir)
    extra = dict(spec.get("backbone_kwargs") or {})
    encoder = create_backbone(backbone, input_size, **extra)
    if spec.get("encoder_dilation"):
        dilate_like_smp(encoder, spec.encoder_dilation)
    load_pretrained(encoder, pretraining, backbone, weights_dir, input_size)
    indices = list(spec.indices) if spec.get("indices") is not None else evenly_spaced_indices(encoder)
    channels = feature_channels(encoder, indices, input_size)
    decoder = instantiate(spec.head, in_channels=channels)
    norm = input_norm(pretraining.get("normalize"))
    model = EncoderDecoder(encoder, decoder, indices, frozen=frozen, norm=norm)
    model.freeze_unused(torch.zeros(1, 3, input_size, input_size))  # e.g. a ViT's final norm (DDP needs this)
    return model


class SegmentationTask(Task):
    """``protocol``: how validation and test masks are read and scored. ``ssl4gie``: masks in PIL's "L" > 127,
    empty masks scored by explicit rules (:mod:`ssl4gie.metrics.segmentation`). ``study``: the study's
    ``Binary_segmentation/eval_segmentation.py``: masks as RGB, luma greyscale in [0, 1] > 0.5, the
    1e-8-smoothed ratios; it needs ``threshold`` 0.5, the study's. Both resize logits bilinearly to the native
    mask size and score per image.
    """

    def __init__(
        self,
        name: str,
        input_size: int,
        monitor: str,
        monitor_mode: str,
        threshold: float,
        augment: bool,
        decoder: DictConfig,
        protocol: str = "ssl4gie",
    ) -> None:
        if protocol not in PROTOCOLS:
            raise ConfigError(f"task.protocol={protocol} is not valid; valid: {', '.join(PROTOCOLS)}")
        if protocol == "study" and threshold != 0.5:
            raise ConfigError(
                f"task.threshold={threshold} contradicts task.protocol=study, which thresholds sigmoid at 0.5; "
                "valid: task.threshold=0.5 or task.protocol=ssl4gie"
            )
        self.protocol = protocol
        self.name, self.input_size, self.monitor, self.monitor_mode = name, input_size, monitor, monitor_mode
        self.threshold, self.augment, self.decoders = threshold, augment, decoder
        self.augment_on_device = False  # set by the CLI on CUDA: augment batches on the GPU, not in workers
        self.device_transform = SegmentationTrainTransform()

    def build_model(self, backbone, pretraining, frozen, weights_dir) -> nn.Module:
        return build_dense_model(
            self.decoders, self.name, self.input_size, backbone, pretraining, frozen, weights_dir
        )

    def build_datasets(self, reader, splits, cache_dir, progress):
        indices = reader.splits()
        return {
            s: SegmentationDataset(
                reader,
                indices[s],
                self.input_size,
                train=(s == "train" and self.augment),
                cache_dir=cache_dir,
                progress=progress,
                device_augment=self.augment_on_device,
                mask_rule=self.protocol,
            )
            for s in splits
        }

    def augment_batch(self, batch):
        """Un-augmented uint8 samples (``augment_on_device``): the training augmentation, per sample, on the
        batch's device."""
        if batch["image"].dtype != torch.uint8:
            return batch
        pairs = [self.device_transform(i, t) for i, t in zip(batch["image"], batch["target"], strict=True)]
        images, targets = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
        return {**batch, "image": images, "target": targets}

    def training_step(self, model, batch):
        logits = model(batch["image"])
        return {"loss": soft_dice_loss(logits.float(), batch["target"].float())}

    def predict(self, model, batch):
        return model(batch["image"]).float()

    def evaluator(self, keep: int = 0, save_dir: Path | None = None) -> Evaluator:
        return SegmentationEvaluator(self.threshold, keep, save_dir, self.protocol)

    def frame_dataset(self, paths: list[Path]) -> SegmentationFrames:
        return SegmentationFrames(paths, self.input_size)

    def frame_predictor(self, save_dir: Path, keep: int = 0) -> Evaluator:
        return SegmentationFramePredictor(self.threshold, save_dir, keep)

    def draw_frames(self, kept, folder):
        """image | predicted polyp pixels tinted green."""
        paths = []
        for item in kept:
            image = np.asarray(open_image(Path(item["meta"]["image_path"]), "RGB"))
            fig = prediction_panels(image, item["pred"], title=item["meta"]["file"])
            paths.append(save_figure(fig, folder / f"{item['meta']['name']}.png"))
        return paths

    def draw(self, kept, folder):
        paths = []
        for item in kept:
            image = np.asarray(open_image(Path(item["meta"]["image_path"]), "RGB"))
            fig = segmentation_panels(
                image,
                item["target"],
                item["pred"],
                title=f"{item['meta']['name']}  Dice {item['row']['dice']:.3f}",
            )
            paths.append(save_figure(fig, folder / f"{item['meta']['name']}.png"))
        return paths


def native_prediction(logits: torch.Tensor, size: tuple[int, int], threshold: float) -> torch.Tensor:
    """1×s×s logits -> bool H×W mask on the CPU: resized bilinearly to ``size`` (H, W), sigmoid > ``threshold``
    (as the study's ``eval_segmentation.py``). The one rule for test metrics, ``mode=predict`` masks and
    predictions on frames."""
    resized = F.interpolate(logits[None].float(), size=tuple(size), mode="bilinear", align_corners=False)
    return (torch.sigmoid(resized)[0, 0] > threshold).cpu()


def write_mask(path: Path, pred: torch.Tensor) -> Path:
    """A bool H×W mask as an 8-bit PNG of 0/255, atomically."""
    with atomic_path(path) as tmp:
        Image.fromarray(pred.numpy().astype(np.uint8) * 255).save(tmp, format="PNG")
    return path


class SegmentationFrames(FrameDataset):
    """Frames preprocessed as the evaluation's images: bicubic resize to ``size``² (aspect ratio ignored, as
    :func:`ssl4gie.data.segmentation.decode_pair`), ImageNet normalisation."""

    def __init__(self, paths: list[Path], size: int) -> None:
        super().__init__(paths)
        self.size = size

    def sample(self, image: Image.Image, meta: dict) -> dict:
        resized = np.asarray(image.resize((self.size, self.size), Image.Resampling.BICUBIC))
        return {"image": normalize(torch.from_numpy(resized.copy()).permute(2, 0, 1)), "meta": meta}


class SegmentationFramePredictor(Evaluator):
    """Writes ``<stem>.png`` (0/255, the frame's native size) per frame; rows: file, size, polyp fraction."""

    def __init__(self, threshold: float, save_dir: Path, keep: int = 0) -> None:
        super().__init__(keep, save_dir)
        self.threshold, self.rows = threshold, []

    def process(self, batch: dict[str, Any], outputs: torch.Tensor) -> None:
        for logits, meta in zip(outputs, batch["meta"], strict=True):
            pred = native_prediction(logits, meta["orig_size"], self.threshold)
            write_mask(self.save_dir / f"{meta['name']}.png", pred)
            height, width = meta["orig_size"]
            self.rows.append(
                {
                    "file": meta["file"],
                    "height": height,
                    "width": width,
                    "polyp_fraction": float(pred.float().mean()),
                }
            )
            if len(self.kept) < self.keep:
                self.kept.append({"meta": meta, "pred": pred.numpy()})

    def compute(self) -> tuple[dict[str, float], list[dict]]:
        return {}, self.rows


class SegmentationEvaluator(Evaluator):
    """Logits are resized (bilinear) to each mask's native size, then thresholded (as the study's
    ``eval_segmentation.py``); metrics and the
    trivial baselines by ``protocol`` (:func:`ssl4gie.metrics.segmentation.binary_metrics`)."""

    def __init__(
        self, threshold: float, keep: int = 0, save_dir: Path | None = None, protocol: str = "ssl4gie"
    ) -> None:
        super().__init__(keep, save_dir)
        self.threshold, self.protocol = threshold, protocol
        self.metrics = SegmentationMetricAccumulator(protocol)
        # Dice of the two trivial answers, to read the model's Dice against (printed beside it).
        self.baselines: dict[str, list[float]] = {"dice_all_background": [], "dice_all_polyp": []}

    def process(self, batch: dict[str, Any], outputs: torch.Tensor) -> None:
        for logits, target, meta in zip(outputs, batch["target_native"], batch["meta"], strict=True):
            pred = native_prediction(logits, tuple(target.shape), self.threshold)
            target = target.cpu()
            row = self.metrics.update(pred, target, meta["name"])
            self.baselines["dice_all_background"].append(
                binary_metrics(torch.zeros_like(target), target, self.protocol)["dice"]
            )
            self.baselines["dice_all_polyp"].append(
                binary_metrics(torch.ones_like(target), target, self.protocol)["dice"]
            )
            if len(self.kept) < self.keep:
                self.kept.append({"meta": meta, "target": target.numpy(), "pred": pred.numpy(), "row": row})
            if self.save_dir is not None:
                write_mask(self.save_dir / f"{meta['name']}.png", pred)

    def compute(self):
        metrics, rows = self.metrics.compute()
        metrics.update({k: sum(v) / len(v) for k, v in self.baselines.items() if v})
        return metrics, rows
