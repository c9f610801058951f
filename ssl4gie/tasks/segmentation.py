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

from ssl4gie.data.readers import open_image
from ssl4gie.data.segmentation import SegmentationDataset
from ssl4gie.data.transforms import SegmentationTrainTransform
from ssl4gie.errors import ConfigError
from ssl4gie.losses import soft_dice_loss
from ssl4gie.metrics.segmentation import SegmentationMetricAccumulator, binary_metrics
from ssl4gie.models.backbone import EncoderDecoder, create_backbone, evenly_spaced_indices, feature_channels
from ssl4gie.models.dilation import dilate_like_smp
from ssl4gie.models.pretrained import load_pretrained
from ssl4gie.tasks.base import Evaluator, Task
from ssl4gie.utils.io import atomic_path
from ssl4gie.visualize import save_figure, segmentation_panels

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
    """Encoder from timm + the task's decoder for the backbone's family, built from the encoder's feature shapes.

    The family's decoder spec may name encoder stages to dilate as smp 0.3.2 does (``encoder_dilation``, e.g.
    ``{layer4: 2}``: every conv of layer4 at stride 1, dilation 2), applied before the features are measured.
    """
    if backbone.family not in decoders:
        raise ConfigError(
            f"task={task} has no decoder for backbone family '{backbone.family}' "
            f"(backbone={backbone.name}); known families: {sorted(decoders)}"
        )
    spec = decoders[backbone.family]
    extra = dict(spec.get("backbone_kwargs") or {})
    encoder = create_backbone(backbone, input_size, **extra)
    if spec.get("encoder_dilation"):
        dilate_like_smp(encoder, spec.encoder_dilation)
    load_pretrained(encoder, pretraining, backbone, weights_dir, input_size)
    indices = list(spec.indices) if spec.get("indices") is not None else evenly_spaced_indices(encoder)
    channels = feature_channels(encoder, indices, input_size)
    decoder = instantiate(spec.head, in_channels=channels)
    model = EncoderDecoder(encoder, decoder, indices, frozen=frozen)
    model.freeze_unused(torch.zeros(1, 3, input_size, input_size))  # e.g. a ViT's final norm (DDP needs this)
    return model


class SegmentationTask(Task):
    def __init__(
        self,
        name: str,
        input_size: int,
        monitor: str,
        monitor_mode: str,
        threshold: float,
        augment: bool,
        decoder: DictConfig,
    ) -> None:
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
        return SegmentationEvaluator(self.threshold, keep, save_dir)

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


class SegmentationEvaluator(Evaluator):
    """Logits are resized (bilinear) to each mask's native size, then thresholded (SPEC 6.3)."""

    def __init__(self, threshold: float, keep: int = 0, save_dir: Path | None = None) -> None:
        super().__init__(keep, save_dir)
        self.threshold = threshold
        self.metrics = SegmentationMetricAccumulator()
        # Dice of the two trivial answers, to read the model's Dice against (printed beside it).
        self.baselines: dict[str, list[float]] = {"dice_all_background": [], "dice_all_polyp": []}

    def process(self, batch: dict[str, Any], outputs: torch.Tensor) -> None:
        for logits, target, meta in zip(outputs, batch["target_native"], batch["meta"], strict=True):
            prob = torch.sigmoid(
                F.interpolate(
                    logits[None].float(), size=tuple(target.shape), mode="bilinear", align_corners=False
                )
            )[0, 0]
            pred = (prob > self.threshold).cpu()
            target = target.cpu()
            row = self.metrics.update(pred, target, meta["name"])
            self.baselines["dice_all_background"].append(
                binary_metrics(torch.zeros_like(target), target)["dice"]
            )
            self.baselines["dice_all_polyp"].append(binary_metrics(torch.ones_like(target), target)["dice"])
            if len(self.kept) < self.keep:
                self.kept.append({"meta": meta, "target": target.numpy(), "pred": pred.numpy(), "row": row})
            if self.save_dir is not None:
                self.save_dir.mkdir(parents=True, exist_ok=True)
                with atomic_path(self.save_dir / f"{meta['name']}.png") as tmp:
                    Image.fromarray(pred.numpy().astype(np.uint8) * 255).save(tmp, format="PNG")

    def compute(self):
        metrics, rows = self.metrics.compute()
        metrics.update({k: sum(v) / len(v) for k, v in self.baselines.items() if v})
        return metrics, rows
