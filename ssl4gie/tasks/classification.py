"""Image classification (HyperKvasir anatomical landmarks / pathological findings), as the study's
``Classification/train_classification.py`` and ``eval_classification.py``.

Model: a timm backbone without classifier (pooled ResNet features, or the ViT's CLS token after the final
norm) and one linear layer. Loss: class-weighted cross-entropy, weights from the **training split only** by
default (the study's ``train_classification.py`` counted every split, test included). Metrics: accuracy and
macro precision/recall/F1 with explicit zero-division handling (the study's ``Metrics/performance.py`` adds
1e-8 to numerator and denominator, so an absent, never-predicted class scored F1 = 2; ``task.protocol=study``
reproduces it).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig
from PIL import Image
from torch import nn

from ssl4gie.data.frames import FrameDataset
from ssl4gie.data.hyperkvasir import ClassificationTrainTransform, HyperKvasirDataset
from ssl4gie.data.readers import open_image
from ssl4gie.data.transforms import normalize
from ssl4gie.errors import ConfigError, DatasetError
from ssl4gie.metrics.classification import classification_metrics, confusion_matrix
from ssl4gie.models.backbone import BackboneModel, InputNorm, create_backbone, input_norm
from ssl4gie.models.pretrained import load_pretrained, resolve_backbone
from ssl4gie.tasks.base import Evaluator, Task
from ssl4gie.tasks.losses import class_weights, weighted_cross_entropy
from ssl4gie.utils.figures import save_figure
from ssl4gie.utils.io import save_dataframe_csv

log = logging.getLogger(__name__)

# Where the class weights of the loss come from (task.class_weights).
WEIGHT_SOURCES = ("train", "all", "none")  # all = the study (every split); none = plain mean CE
MACRO_OVER = ("present", "all")  # see ssl4gie.metrics.classification.classification_metrics
PROTOCOLS = ("ssl4gie", "study")  # task.protocol: the metrics' formulas (ours, or the study's smoothed ones)


class Classifier(BackboneModel):
    """``head(encoder(x))``: the encoder returns pooled features (timm with ``num_classes=0``).

    With ``frozen=True`` the encoder gets no gradients and stays in eval mode (fixed BatchNorm statistics), so
    only the head learns (the study's ``--frozen``).
    """

    def __init__(
        self, encoder: nn.Module, num_classes: int, frozen: bool = False, norm: InputNorm | None = None
    ) -> None:
        super().__init__(encoder, frozen, norm)
        self.head = nn.Linear(encoder.num_features, num_classes)  # PyTorch default init, as the study

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self.encoder_grad():
            features = self.encoder(self.prepare(x))
        return self.head(features)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """``nn.Module.load_state_dict``; a head of another class count is a ConfigError (no traceback)."""
        found = state_dict.get("head.weight")
        if found is not None and found.shape[0] != self.head.out_features:
            raise ConfigError(
                f"the checkpoint classifies {found.shape[0]} classes but this dataset has "
                f"{self.head.out_features}: evaluate it on the dataset it was trained on (option dataset)"
            )
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


class ClassificationTask(Task):
    """``classes``: the class names in id order (``dataset.classes``); the reader must find exactly these.

    ``class_weights``: ``train`` (weights from the training split), ``all`` (every split, as the study) or
    ``none``. ``protocol``: ``ssl4gie`` (explicit zero division) or ``study`` (the study's
    ``eval_classification.py`` with ``Metrics/performance.py``: 1e-8-smoothed ratios averaged over every
    class, so an absent, never-predicted class scores F1 = 2).
    ``macro_over``: the classes the macro means run over (``present`` or ``all``); ``None`` = the protocol's
    (``present`` for ssl4gie, ``all`` for study); ``present`` with ``study`` is a ConfigError.
    """

    def __init__(
        self,
        name: str,
        input_size: int,
        monitor: str,
        monitor_mode: str,
        augment: bool,
        classes: Sequence[str] | None,
        class_weights: str = "train",
        macro_over: str | None = None,
        protocol: str = "ssl4gie",
    ) -> None:
        if not classes:
            raise ConfigError(
                "task=classification needs the class list: set dataset.classes "
                "(see conf/dataset/hyperkvasir_*.yaml)"
            )
        if class_weights not in WEIGHT_SOURCES:
            raise ConfigError(
                f"task.class_weights={class_weights} is not valid; valid: {', '.join(WEIGHT_SOURCES)}"
            )
        if protocol not in PROTOCOLS:
            raise ConfigError(f"task.protocol={protocol} is not valid; valid: {', '.join(PROTOCOLS)}")
        if macro_over is None:
            macro_over = "all" if protocol == "study" else "present"
        if macro_over not in MACRO_OVER:
            raise ConfigError(
                f"task.macro_over={macro_over} is not valid; valid: {', '.join(MACRO_OVER)} (or null)"
            )
        if protocol == "study" and macro_over != "all":
            raise ConfigError(
                f"task.macro_over={macro_over} contradicts task.protocol=study, which averages over every class; "
                "valid: task.macro_over=all or null"
            )
        self.protocol = protocol
        self.name, self.monitor, self.monitor_mode = name, monitor, monitor_mode
        self.input_size = int(input_size)
        self.augment, self.classes = augment, [str(c) for c in classes]
        self.weight_source, self.macro_over = class_weights, macro_over
        self.weights: torch.Tensor | None = None  # set by build_datasets from the training labels
        self.augment_on_device = False  # set by the CLI on CUDA: augment batches on the GPU, not in workers
        self.device_transform = ClassificationTrainTransform()

    def build_model(
        self, backbone: DictConfig, pretraining: DictConfig, frozen: bool, weights_dir: str
    ) -> nn.Module:
        backbone = resolve_backbone(backbone, pretraining, weights_dir)
        encoder = create_backbone(backbone, self.input_size)
        load_pretrained(encoder, pretraining, backbone, weights_dir, self.input_size)
        norm = input_norm(pretraining.get("normalize"))
        return Classifier(encoder, len(self.classes), frozen=frozen, norm=norm)

    def build_datasets(self, reader, splits, cache_dir, progress):
        if reader.class_names != self.classes:
            raise DatasetError(
                f"dataset {reader.name} has classes {reader.class_names} but task.classes is {self.classes}"
            )
        indices = reader.splits()
        if "train" in splits:
            self.weights = self.loss_weights(reader.labels, indices["train"])
        return {
            s: HyperKvasirDataset(
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

    def loss_weights(self, labels: Sequence[int], train: Sequence[int]) -> torch.Tensor | None:
        """Inverse-frequency weights w_c = N / (C · N_c) over the images ``task.class_weights`` names."""
        if self.weight_source == "none":
            return None
        used = [labels[i] for i in train] if self.weight_source == "train" else list(labels)
        weights = class_weights(used, len(self.classes))
        absent = [c for c, w in zip(self.classes, weights.tolist(), strict=True) if w == 0]
        if absent:
            log.warning("no %s image of class(es) %s: they get loss weight 0", self.weight_source, absent)
        log.info(
            "class weights (%s split%s): %s",
            self.weight_source,
            "" if self.weight_source == "train" else "s",
            ", ".join(f"{c} {w:.3g}" for c, w in zip(self.classes, weights.tolist(), strict=True)),
        )
        return weights

    def training_step(self, model, batch):
        if self.weights is None and self.weight_source != "none":
            raise RuntimeError(
                "ClassificationTask.build_datasets(reader, ['train', ...]) must run before training"
            )
        logits = model(batch["image"])
        return {"loss": weighted_cross_entropy(logits, batch["target"], self.weights)}

    def augment_batch(self, batch):
        """Un-augmented uint8 samples (``augment_on_device``): the training augmentation, per sample, on the
        batch's device."""
        if batch["image"].dtype != torch.uint8:
            return batch
        return {**batch, "image": torch.stack([self.device_transform(image) for image in batch["image"]])}

    def predict(self, model, batch):
        return model(batch["image"]).float()

    def evaluator(self, keep: int = 0, save_dir: Path | None = None) -> Evaluator:
        return ClassificationEvaluator(self.classes, self.macro_over, keep, save_dir, self.protocol)

    def draw(self, kept, folder):
        """Confusion matrix (``folder/confusion_matrix.png``), example images with true/predicted class
        (``folder/examples.png``), and the per-class table as ``folder/../per_class_test.csv`` (the engine
        draws the test split's items only)."""
        paths = []
        summary = next((item for item in kept if item["kind"] == "summary"), None)
        if summary is not None:
            save_dataframe_csv(folder.parent / "per_class_test.csv", summary["table"])
            figure = confusion_figure(summary["confusion"], self.classes)
            paths.append(save_figure(figure, folder / "confusion_matrix.png"))
        examples = [item for item in kept if item["kind"] == "example"]
        if examples:
            paths.append(save_figure(examples_figure(examples), folder / "examples.png"))
        return paths

    def frame_dataset(self, paths: list[Path]) -> ClassificationFrames:
        return ClassificationFrames(paths, self.input_size)

    def frame_predictor(self, save_dir: Path, keep: int = 0) -> Evaluator:
        """Class names: ``dataset.classes`` of the config, which eval/predict check against the checkpoint's."""
        return ClassificationFramePredictor(self.classes, save_dir, keep)

    def draw_frames(self, kept, folder):
        """One ``folder/examples.png`` grid of the kept frames with their predicted class."""
        return [save_figure(examples_figure(kept), folder / "examples.png")] if kept else []

    def extra_state(self) -> dict:
        weights = None if self.weights is None else self.weights.tolist()
        return {
            "classes": list(self.classes),
            "class_weights": weights,
            "class_weights_from": self.weight_source,
        }


class ClassificationEvaluator(Evaluator):
    """Argmax predictions and softmax probabilities of every image; metrics over the whole split (as
    the study's ``eval_classification.py``).

    After ``compute``, ``kept`` holds up to ``keep`` examples (``kind="example"``; misclassified ones first,
    up to half) and always one ``kind="summary"`` item with the confusion matrix and the per-class table.
    With ``save_dir`` (predict mode), ``compute`` also writes ``save_dir/predictions.csv``: image path,
    predicted class and class probabilities of every image (the per-image rows add the true class).
    """

    def __init__(
        self,
        classes: Sequence[str],
        macro_over: str,
        keep: int = 0,
        save_dir: Path | None = None,
        protocol: str = "ssl4gie",
    ) -> None:
        """``macro_over`` and ``protocol``: as :func:`ssl4gie.metrics.classification.classification_metrics`'s
        ``average_over`` and ``protocol``."""
        super().__init__(keep, save_dir)
        self.classes, self.macro_over, self.protocol = list(classes), macro_over, protocol
        self.true: list[torch.Tensor] = []
        self.probs: list[torch.Tensor] = []
        self.metas: list[dict] = []

    def process(self, batch: dict[str, Any], outputs: torch.Tensor) -> None:
        self.probs.append(torch.softmax(outputs.float(), dim=1).cpu())
        self.true.append(batch["target"].reshape(-1).cpu())
        self.metas += list(batch["meta"])

    def compute(self) -> tuple[dict[str, float], list[dict]]:
        probs = torch.cat(self.probs).numpy()
        true = torch.cat(self.true).numpy()
        pred = probs.argmax(axis=1)
        n = len(self.classes)
        metrics, table = classification_metrics(
            true, pred, n, self.classes, average_over=self.macro_over, protocol=self.protocol
        )
        rows = []
        for meta, t, p, prob in zip(self.metas, true, pred, probs, strict=True):
            rows.append(
                {
                    "name": meta["name"],
                    "index": meta["index"],
                    "class_id": int(t),
                    "class": self.classes[t],
                    "predicted_id": int(p),
                    "predicted": self.classes[p],
                    "correct": bool(t == p),
                    "confidence": float(prob[p]),
                }
            )
            rows[-1].update({f"p_{c}": float(v) for c, v in zip(self.classes, prob, strict=True)})
        wrong = [i for i in range(len(rows)) if not rows[i]["correct"]]
        right = [i for i in range(len(rows)) if rows[i]["correct"]]
        chosen = wrong[: self.keep // 2]
        chosen += (right + wrong[len(chosen) :])[: self.keep - len(chosen)]
        self.kept = [{"kind": "example", "meta": self.metas[i], "row": rows[i]} for i in chosen]
        self.kept.append({"kind": "summary", "confusion": confusion_matrix(true, pred, n), "table": table})
        if self.save_dir is not None:
            predictions = pd.DataFrame(rows).drop(columns=["class_id", "class", "correct"])
            predictions.insert(2, "image_path", [meta["image_path"] for meta in self.metas])
            save_dataframe_csv(self.save_dir / "predictions.csv", predictions)
        return metrics, rows


class ClassificationFrames(FrameDataset):
    """Frames preprocessed as the evaluation's images (:func:`ssl4gie.data.hyperkvasir.decode`: bicubic to
    ``size``², aspect ratio ignored), ImageNet-normalised."""

    def __init__(self, paths: list[Path], size: int) -> None:
        super().__init__(paths)
        self.size = size

    def sample(self, image, meta: dict) -> dict:
        resized = np.asarray(image.resize((self.size, self.size), Image.Resampling.BICUBIC))
        return {"image": normalize(torch.from_numpy(resized.copy()).permute(2, 0, 1)), "meta": meta}


class ClassificationFramePredictor(Evaluator):
    """Softmax of every frame; ``compute`` writes ``save_dir/predictions.csv``: ``file``, ``predicted_id``,
    ``predicted``, ``confidence`` and one ``p_<class>`` column per class (the columns of the test split's
    ``predictions.csv``, without the dataset's ``index``/``image_path``)."""

    def __init__(self, classes: Sequence[str], save_dir: Path, keep: int = 0) -> None:
        super().__init__(keep, save_dir)
        self.classes, self.rows = list(classes), []

    def process(self, batch: dict[str, Any], outputs: torch.Tensor) -> None:
        for prob, meta in zip(
            torch.softmax(outputs.float(), dim=1).cpu().numpy(), batch["meta"], strict=True
        ):
            p = int(prob.argmax())
            row = {
                "file": meta["file"],
                "predicted_id": p,
                "predicted": self.classes[p],
                "confidence": float(prob[p]),
            }
            row.update({f"p_{c}": float(v) for c, v in zip(self.classes, prob, strict=True)})
            self.rows.append(row)
            if len(self.kept) < self.keep:
                self.kept.append({"kind": "example", "meta": meta, "row": row})

    def compute(self) -> tuple[dict[str, float], list[dict]]:
        save_dataframe_csv(self.save_dir / "predictions.csv", pd.DataFrame(self.rows))
        return {}, self.rows


def confusion_figure(counts: np.ndarray, classes: Sequence[str]):
    """Counts in the cells, colour = fraction of each true class (row-normalised; an empty row stays 0)."""
    n = len(classes)
    support = counts.sum(axis=1, keepdims=True)
    fraction = np.divide(counts, support, out=np.zeros(counts.shape), where=support > 0)
    side = 2.5 + 0.6 * n
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    shown = ax.imshow(fraction, cmap="Blues", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            ax.text(
                j,
                i,
                str(counts[i, j]),
                ha="center",
                va="center",
                fontsize=8,
                color="white" if fraction[i, j] > 0.5 else "black",
            )
    ax.set_xticks(range(n), classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(
        range(n), [f"{c} ({int(s)})" for c, s in zip(classes, support[:, 0], strict=True)], fontsize=8
    )
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class (test images)")
    accuracy = np.trace(counts) / max(counts.sum(), 1)
    ax.set_title(f"confusion matrix, accuracy {accuracy:.3f}", fontsize=10)
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    fig.tight_layout()
    return fig


def examples_figure(examples: list[dict]):
    """A grid of test images titled with the true and predicted class (green when right, red when wrong)."""
    cols = min(4, len(examples))
    rows = math.ceil(len(examples) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.5 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, item in zip(axes.flat, examples, strict=False):
        row = item["row"]
        ax.imshow(np.asarray(open_image(Path(item["meta"]["image_path"]), "RGB")))
        if "class" not in row:  # a frame without ground truth
            ax.set_title(
                f"{row['file'][:18]}\npred: {row['predicted']} ({row['confidence']:.2f})", fontsize=8
            )
            continue
        ax.set_title(
            f"{row['name'][:18]}\ntrue: {row['class']}\npred: {row['predicted']} ({row['confidence']:.2f})",
            fontsize=8,
            color="green" if row["correct"] else "red",
        )
    fig.tight_layout()
    return fig
