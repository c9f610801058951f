"""Monocular depth on C3VD: MiDaS SSI loss, validation at network resolution, test metrics at native resolution.

Model: the task's decoder for the backbone family (ResNet -> the study's bottleneck decoder on layer1..4, ViT ->
DPT with the depth head), both ending in a Sigmoid, so the output is a relative depth map in (0, 1).

Scale. The dataset gives depth / 65535 in [0, 1] (0 = invalid). Metrics are in millimetres: value ·
``max_depth_mm`` (100 mm for C3VD, a dataset option) for target and prediction alike, the prediction being
aligned per image to the target first (the accumulator's oracle scale+shift, and median scaling).

Protocol (``task.protocol``). ``ssl4gie`` (default): the above. ``study``: test frames are scored exactly as the
study's eval_depth.py scores them (:func:`~ssl4gie.metrics.depth.study_depth_maps`: fit at network resolution,
native target / 65536, ×10 units, lower median) under the keys ``rmse``, ``med_rel``, ``mae`` (plus ``ssi_mse``);
validation is the same under both protocols.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image
from torch import nn

from ssl4gie.data.c3vd import C3VD, DEPTH_SCALE, C3VDDataset, DepthTrainTransform, PadGeometry
from ssl4gie.data.frames import FrameDataset
from ssl4gie.data.readers import open_image
from ssl4gie.data.transforms import normalize
from ssl4gie.errors import ConfigError, DatasetError
from ssl4gie.metrics.depth import (
    STUDY_METRIC_NAMES,
    STUDY_NATIVE_SCALE,
    STUDY_UNIT,
    DepthMetricAccumulator,
    depth_metrics,
    study_depth_maps,
    study_depth_metrics,
)
from ssl4gie.tasks.base import Evaluator, Task
from ssl4gie.tasks.losses import align_scale_shift, ssi_loss, ssi_mse
from ssl4gie.tasks.segmentation import build_dense_model
from ssl4gie.utils.figures import save_figure
from ssl4gie.utils.io import atomic_path

FIGURE_MAX_SIDE = 640  # figures are subsampled to this; 1350×1080 panels would only make larger PNGs
PROTOCOLS = ("ssl4gie", "study")


class DepthTask(Task):
    """Depth on C3VD, as the study's ``Depth_estimation/train_depth.py`` and ``eval_depth.py``. ``monitor`` is
    ``val/ssi_mse`` (mode min), the study's selection metric.

    ``protocol``: how test frames are scored, ``ssl4gie`` or ``study`` (see the module docstring); any other
    value is a ConfigError.
    """

    def __init__(
        self,
        name: str,
        input_size: int,
        monitor: str,
        monitor_mode: str,
        augment: bool,
        decoder: DictConfig,
        max_depth_mm: float,
        ssi_alpha: float = 0.1,
        ssi_scales: int = 4,
        protocol: str = "ssl4gie",
    ) -> None:
        if protocol not in PROTOCOLS:
            raise ConfigError(f"task.protocol must be one of {', '.join(PROTOCOLS)}, got '{protocol}'")
        self.protocol = protocol
        self.name, self.input_size, self.monitor, self.monitor_mode = name, input_size, monitor, monitor_mode
        self.augment, self.decoders, self.max_depth_mm = augment, decoder, float(max_depth_mm)
        self.ssi_alpha, self.ssi_scales = float(ssi_alpha), int(ssi_scales)
        self.augment_on_device = False  # set by the CLI on CUDA: augment batches on the GPU, not in workers
        self.device_transform = DepthTrainTransform()

    def build_model(
        self, backbone: DictConfig, pretraining: DictConfig, frozen: bool, weights_dir: str
    ) -> nn.Module:
        return build_dense_model(
            self.decoders, self.name, self.input_size, backbone, pretraining, frozen, weights_dir
        )

    def build_datasets(
        self, reader: C3VD, splits: list[str], cache_dir: str | None, progress: bool
    ) -> dict[str, C3VDDataset]:
        indices = reader.splits()
        for s in splits:
            if not indices[s]:
                videos = [e.code for e in reader.table if e.split == s]
                raise DatasetError(
                    f"the {s} split of C3VD at {reader.root} is empty: none of its videos "
                    f"{videos} was found (dataset.split lists them)"
                )
        return {
            # Only the test split carries native-resolution depth: validation is scored at network resolution
            # as in the study's train_depth.py, and reading full-size TIFFs every epoch would be slow.
            s: C3VDDataset(reader, indices[s], self.input_size, train=(s == "train" and self.augment),
                           native=(s == "test"), cache_dir=cache_dir, progress=progress,
                           device_augment=self.augment_on_device)
            for s in splits
        }  # fmt: skip

    def augment_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Un-augmented uint8 samples (``augment_on_device``): the training augmentation, per sample, on the
        batch's device."""
        if batch["image"].dtype != torch.uint8:
            return batch
        pairs = [self.device_transform(i, t) for i, t in zip(batch["image"], batch["target"], strict=True)]
        return {
            **batch,
            "image": torch.stack([p[0] for p in pairs]),
            "target": torch.stack([p[1] for p in pairs]),
        }

    def training_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        pred = model(batch["image"])
        return {
            "loss": ssi_loss(pred.float(), batch["target"].float(), None, self.ssi_alpha, self.ssi_scales)
        }

    def predict(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        return model(batch["image"]).float()

    def evaluator(self, keep: int = 0, save_dir: Path | None = None) -> Evaluator:
        return DepthEvaluator(self.max_depth_mm, keep, save_dir, self.protocol)

    def frame_dataset(self, paths: list[Path]) -> DepthFrames:
        return DepthFrames(paths, self.input_size)

    def frame_predictor(self, save_dir: Path, keep: int = 0) -> Evaluator:
        return DepthFramePredictor(self.max_depth_mm, save_dir, keep)

    def draw_frames(self, kept: list[dict], folder: Path) -> list[Path]:
        paths = []
        for item in kept:
            image = np.asarray(open_image(Path(item["meta"]["image_path"]), "RGB"))
            step = max(1, -(-max(image.shape[:2]) // FIGURE_MAX_SIDE))
            fig = frame_depth_panels(
                image[::step, ::step], item["pred"][::step, ::step], item["meta"]["file"]
            )
            paths.append(save_figure(fig, folder / f"{item['meta']['name']}.png"))
        return paths

    def draw(self, kept: list[dict], folder: Path) -> list[Path]:
        paths = []
        for item in kept:
            meta = item["meta"]
            image = np.asarray(open_image(Path(meta["image_path"]), "RGB"))
            step = max(1, -(-max(image.shape[:2]) // FIGURE_MAX_SIDE))
            row, unit = item["row"], item.get("unit", "mm")
            if "abs_rel" in row:
                scores = f"RMSE {row['rmse']:.2f} mm  AbsRel {row['abs_rel']:.3f}  δ1 {row['delta1']:.3f}"
            else:  # protocol=study: the study's three numbers in its units
                scores = f"RMSE {row['rmse']:.3f}  RelErr {row['med_rel']:.3f}  AbsErr {row['mae']:.3f}"
            title = f"{meta['name']}  {scores}  ({item['where']})"
            fig = depth_panels(
                image[::step, ::step],
                item["target"][::step, ::step],
                item["pred"][::step, ::step],
                title,
                unit,
            )
            paths.append(save_figure(fig, folder / f"{meta['name']}.png"))
        return paths


class DepthEvaluator(Evaluator):
    """Scores one split; outputs are B×1×s×s relative depth in (0, 1) at network resolution.

    * ``ssi_mse``: the study's validation metric (SSI data term, normalised units) pooled over **all** pixels of
      the split — Σ squared residuals / (2 Σ valid pixels) — so it does not depend on the batch size.
    * ``rmse``, ``abs_rel``, ``med_rel``, ``mae``, ``delta1`` (mm; oracle scale+shift) and ``…_median``
      (median scaling), averaged over images: at network resolution for batches without ``target_native``
      (validation), at native resolution otherwise (test, as the study's ``eval_depth.py``).

    With ``protocol="study"``, batches with ``target_native`` are instead scored by the study's eval_depth.py steps
    (:func:`~ssl4gie.metrics.depth.study_depth_maps`): ``rmse``, ``med_rel``, ``mae`` in the study's units (×10 of
    the [0, 1] map) and ``ssi_mse``; per-image rows hold ``name``, ``n_valid``, those three and ``video``.

    With ``save_dir``, each prediction is written as ``<name>_depth.tiff``: the scale+shift-aligned depth at native
    resolution, clamped to [0, max_depth_mm] and encoded like C3VD (16-bit, 0..65535 = 0..max_depth_mm); under
    the study protocol, the study's post-processed map (before its ×10) in that encoding.
    """

    def __init__(
        self, max_depth_mm: float, keep: int = 0, save_dir: Path | None = None, protocol: str = "ssl4gie"
    ) -> None:
        super().__init__(keep, save_dir)
        if protocol not in PROTOCOLS:
            raise ConfigError(f"task.protocol must be one of {', '.join(PROTOCOLS)}, got '{protocol}'")
        self.max_depth_mm, self.protocol = max_depth_mm, protocol
        self.study_rows: list[dict[str, float | str]] = []
        self.metrics = DepthMetricAccumulator(max_depth_mm)
        self.squared, self.valid = 0.0, 0
        self.videos: dict[str, str] = {}

    def process(self, batch: dict[str, Any], outputs: torch.Tensor) -> None:
        target = batch["target"].float()
        n_valid = int((target > 0).sum())
        # ssi_mse = Σ r² / (2 n) over the batch; multiply back to pool the split's sums
        self.squared += float(ssi_mse(outputs, target)) * 2 * n_valid
        self.valid += n_valid
        names = [m["name"] for m in batch["meta"]]
        self.videos.update({m["name"]: m["video"] for m in batch["meta"]})
        native = batch.get("target_native")
        if native is None:  # validation: the study's resolution, target and output both s×s
            mm = self.max_depth_mm
            self.metrics.update(outputs * mm, target * mm, target > 0, names)
            for i, meta in enumerate(batch["meta"]):
                self._keep(meta, outputs[i, 0] * mm, target[i, 0] * mm, "network resolution")
            return
        if self.protocol == "study":
            self._process_study(batch, outputs, target, native)
            return
        for i, meta in enumerate(batch["meta"]):
            pred_mm = meta["geometry"].to_native(outputs[i, 0]) * self.max_depth_mm
            target_mm = native[i].float() * self.max_depth_mm
            # The scale+shift fit runs here, at native resolution, on exactly the pixels that are scored (the
            # study fits at 224² against the nearest-resized target, then upsamples). Bilinear upsampling is
            # linear and its weights sum to 1, so up(s·p + t) = s·up(p) + t: both fits align the same map and
            # differ only in which pixels the least squares sees; ours is the optimum for the scored pixels.
            self.metrics.update(pred_mm[None], target_mm[None], (target_mm > 0)[None], [meta["name"]])
            self._keep(meta, pred_mm, target_mm, "native resolution")
            if self.save_dir is not None:
                self._save(meta["name"], self._aligned(pred_mm, target_mm))

    def _process_study(
        self, batch: dict[str, Any], outputs: torch.Tensor, target: torch.Tensor, native: list[torch.Tensor]
    ) -> None:
        """protocol=study: each test frame scored as the study's ``eval_depth.py`` scores it."""
        for i, meta in enumerate(batch["meta"]):
            # The dataset's native target is code / 65535; the study divides the code by 65536.
            native_study = native[i].double() * DEPTH_SCALE / STUDY_NATIVE_SCALE
            pred, target_study = study_depth_maps(outputs[i, 0], target[i, 0], native_study)
            row: dict[str, float | str] = {"name": meta["name"], "n_valid": float((target_study > 0).sum())}
            row.update(study_depth_metrics(pred, target_study))
            self.study_rows.append(row)
            if len(self.kept) < self.keep:
                self.kept.append({"meta": meta, "target": target_study.cpu().numpy(), "pred": pred.cpu().numpy(),
                                  "row": row, "where": "study protocol", "unit": "study units (×10)"})  # fmt: skip
            if self.save_dir is not None:
                self._save(meta["name"], pred / STUDY_UNIT * self.max_depth_mm)

    def _study_compute(self) -> tuple[dict[str, float], list[dict]]:
        """Means over frames of the study's three numbers. A frame without valid depth (NaN row) is left out of the
        mean; the study's own sum would turn NaN instead."""
        metrics = {}
        for key in STUDY_METRIC_NAMES:
            values = np.array([row[key] for row in self.study_rows], dtype=np.float64)
            metrics[key] = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
        return metrics, [dict(row) for row in self.study_rows]

    def _aligned(self, pred_mm: torch.Tensor, target_mm: torch.Tensor) -> torch.Tensor:
        """The accumulator's scale+shift alignment of one map, clamped as it clamps."""
        aligned, _, _ = align_scale_shift(pred_mm[None], target_mm[None], (target_mm > 0)[None])
        return aligned[0].clamp(0.0, self.max_depth_mm)

    def _keep(self, meta: dict, pred_mm: torch.Tensor, target_mm: torch.Tensor, where: str) -> None:
        if len(self.kept) >= self.keep:
            return
        aligned = self._aligned(pred_mm, target_mm)
        row = depth_metrics(aligned, target_mm, target_mm > 0)
        self.kept.append({"meta": meta, "target": target_mm.cpu().numpy(), "pred": aligned.cpu().numpy(),
                          "row": row, "where": where})  # fmt: skip

    def _save(self, name: str, aligned_mm: torch.Tensor) -> None:
        write_depth(self.save_dir / f"{name}_depth.tiff", aligned_mm, self.max_depth_mm)

    def compute(self) -> tuple[dict[str, float], list[dict]]:
        metrics, rows = self._study_compute() if self.study_rows else self.metrics.compute()
        metrics["ssi_mse"] = self.squared / (2 * self.valid) if self.valid else float("nan")
        for row in rows:
            row["video"] = self.videos.get(row["name"], "")
        return metrics, rows


def write_depth(path: Path, depth_mm: torch.Tensor, max_depth_mm: float) -> Path:
    """An H×W depth map in mm as a 16-bit TIFF in the C3VD encoding (0..65535 = 0..max_depth_mm), atomically."""
    code = torch.round(depth_mm / max_depth_mm * DEPTH_SCALE).clamp(0, DEPTH_SCALE)
    with atomic_path(path) as tmp:
        Image.fromarray(code.cpu().numpy().astype(np.uint16)).save(tmp, format="TIFF")  # mode I;16
    return path


class DepthFrames(FrameDataset):
    """Frames preprocessed as C3VD test frames: padded to a black square (:class:`PadGeometry`), resized bicubic
    to ``size``², ImageNet-normalised; ``meta["geometry"]`` maps the output back to native resolution."""

    def __init__(self, paths: list[Path], size: int) -> None:
        super().__init__(paths)
        self.size = size

    def sample(self, image: Image.Image, meta: dict) -> dict:
        geometry = PadGeometry(image.width, image.height)
        canvas = Image.fromarray(geometry.pad(np.asarray(image)))
        resized = np.asarray(canvas.resize((self.size, self.size), Image.Resampling.BICUBIC))
        meta["geometry"] = geometry
        return {"image": normalize(torch.from_numpy(resized.copy()).permute(2, 0, 1)), "meta": meta}


class DepthFramePredictor(Evaluator):
    """Writes ``<stem>.tiff`` per frame: the network's relative depth (0, 1) upsampled to the padded square and
    cropped back (as the test metrics), times ``max_depth_mm``, in the C3VD encoding. Without ground truth there
    is no scale+shift alignment: the values are the model's own (scale-and-shift-invariant) depth."""

    def __init__(self, max_depth_mm: float, save_dir: Path, keep: int = 0) -> None:
        super().__init__(keep, save_dir)
        self.max_depth_mm, self.rows = max_depth_mm, []

    def process(self, batch: dict[str, Any], outputs: torch.Tensor) -> None:
        for output, meta in zip(outputs, batch["meta"], strict=True):
            depth_mm = (meta["geometry"].to_native(output[0]) * self.max_depth_mm).clamp(
                0.0, self.max_depth_mm
            )
            write_depth(self.save_dir / f"{meta['name']}.tiff", depth_mm, self.max_depth_mm)
            height, width = meta["orig_size"]
            self.rows.append({"file": meta["file"], "height": height, "width": width,
                              "median_depth_mm": float(depth_mm.median())})  # fmt: skip
            if len(self.kept) < self.keep:
                self.kept.append({"meta": meta, "pred": depth_mm.cpu().numpy()})

    def compute(self) -> tuple[dict[str, float], list[dict]]:
        return {}, self.rows


def frame_depth_panels(image: np.ndarray, pred_mm: np.ndarray, title: str = ""):
    """input | predicted depth (unaligned, mm; the colours of :func:`depth_panels`)."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2))
    axes[0].imshow(image)
    axes[0].set_title("input", fontsize=9)
    shown = axes[1].imshow(
        pred_mm, cmap="magma_r", vmin=0.0, vmax=max(float(np.percentile(pred_mm, 99)), 1e-6)
    )
    axes[1].set_title("predicted depth (not aligned)", fontsize=9)
    fig.colorbar(shown, ax=axes[1], fraction=0.046, pad=0.02).set_label("mm", fontsize=8)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def depth_panels(
    image: np.ndarray, target_mm: np.ndarray, pred_mm: np.ndarray, title: str = "", unit: str = "mm"
):
    """input | target | aligned prediction | |error|; depth in ``unit`` (magma, near = bright), invalid pixels
    grey."""
    valid = target_mm > 0
    hi = float(np.percentile(target_mm[valid], 99)) if valid.any() else 1.0
    error = np.abs(pred_mm - target_mm)
    fig, axes = plt.subplots(1, 4, figsize=(17, 4.2))
    axes[0].imshow(image)
    axes[0].set_title("input", fontsize=9)
    depth_map = plt.get_cmap("magma_r").with_extremes(bad="0.6")
    error_map = plt.get_cmap("viridis").with_extremes(bad="0.6")
    panels = (
        (target_mm, "target depth", depth_map, hi),
        (pred_mm, "prediction (scale+shift aligned)", depth_map, hi),
        (error, "absolute error", error_map, float(np.percentile(error[valid], 99)) if valid.any() else 1.0),
    )
    for ax, (values, label, cmap, vmax) in zip(axes[1:], panels, strict=True):
        shown = ax.imshow(np.ma.masked_where(~valid, values), cmap=cmap, vmin=0.0, vmax=max(vmax, 1e-6))
        ax.set_title(label, fontsize=9)
        fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02).set_label(unit, fontsize=8)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig
