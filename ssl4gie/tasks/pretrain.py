"""Self-supervised pretraining as a task of the one engine: MoCo v3, Barlow Twins or MAE on unlabelled frames.

The method is configuration (``ssl=mocov3|barlowtwins|mae``, ``conf/ssl/``: the published recipe of each method ×
backbone pair); the pieces live in :mod:`ssl4gie.ssl`, one file per method. The task builds the method's model around
the same timm backbone the finetuning grid builds, feeds it two views (or one MAE crop) per frame, moves the momentum
coefficient per optimiser step, monitors collapse (RankMe, feature spread) and a kNN probe on labelled images, and
at the end exports the backbone in the published format under the file name of the finetuning row
``pretraining=hyperkvasir_<method>`` (README: Pretraining).
"""

from __future__ import annotations

import copy
import logging
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import Dataset

from ssl4gie.data.hyperkvasir import HyperKvasirDataset
from ssl4gie.data.ssl_transforms import byol_views, mae_view, probe_view
from ssl4gie.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ssl4gie.data.unlabelled import pretrain_dataset
from ssl4gie.engine.optim import momentum_cosine
from ssl4gie.errors import ConfigError, DatasetError
from ssl4gie.models.backbone import create_backbone
from ssl4gie.models.checkpoints import load_backbone_weights
from ssl4gie.models.pretrained import load_pretrained
from ssl4gie.ssl import export
from ssl4gie.ssl.barlowtwins import BarlowTwins
from ssl4gie.ssl.figures import draw_mae_reconstructions
from ssl4gie.ssl.mae import MaskedAutoencoder, mean_patch_features
from ssl4gie.ssl.mocov3 import MoCoV3
from ssl4gie.ssl.monitor import knn_top1, l2_normalized_std, rankme
from ssl4gie.ssl.vit_init import fix_sincos_pos_embed, freeze_patch_embed, mocov3_init
from ssl4gie.tasks.base import Evaluator, Task
from ssl4gie.utils.conf import group_options
from ssl4gie.utils.io import write_json

log = logging.getLogger(__name__)

# Roles of the validation samples: fixed unlabelled frames (RankMe, spread) and the probe's bank and queries
MONITOR, BANK, QUERY = 0, 1, 2


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def _heads(spec: dict, tiny: dict | None) -> dict:
    """A head's mlp kwargs; backbone.tiny shrinks its widths (same layer structure)."""
    spec = dict(spec)
    if tiny:
        spec.update({k: v for k, v in tiny.items() if k in spec})
    return spec


# ---------------------------------------------------------------------------------------------------- methods
def _build_mocov3(encoder: nn.Module, recipe: dict, tiny: dict | None, family: str) -> nn.Module:
    if family == "vit" and recipe.get("stop_grad_patch_embed"):
        frozen = freeze_patch_embed(encoder)
        log.info("MoCo v3: the patch projection stays at its random initialisation (%s)", ", ".join(frozen))
    return MoCoV3(
        encoder,
        encoder.num_features,
        projector=_heads(recipe["projector"], tiny),
        predictor=_heads(recipe["predictor"], tiny),
        tau=recipe["tau"],
    )


def _build_barlowtwins(encoder: nn.Module, recipe: dict, tiny: dict | None, family: str) -> nn.Module:
    return BarlowTwins(
        encoder,
        encoder.num_features,
        projector=_heads(recipe["projector"], tiny),
        lambd=recipe["lambd"],
        exact_gradient=recipe.get("exact_gradient", True),
    )


def _build_mae(encoder: nn.Module, recipe: dict, tiny: dict | None, family: str) -> nn.Module:
    decoder = {**recipe["decoder"], **(tiny or {})}
    return MaskedAutoencoder(
        encoder,
        decoder_dim=decoder["dim"],
        decoder_depth=decoder["depth"],
        decoder_heads=decoder["heads"],
        mask_ratio=recipe["mask_ratio"],
        norm_pix_loss=recipe["norm_pix_loss"],
    )


@dataclass(frozen=True)
class Method:
    """What differs between the methods, as data: how to build the model, the views, the probe feature, the export."""

    build: Callable[[nn.Module, dict, dict | None, str], nn.Module]
    two_views: bool
    exact_accumulation: bool  # no coupling between a batch's images (MAE: no BatchNorm, no negatives)
    coupling: str  # what a smaller per-GPU batch changes, for the messages


METHODS = {
    "mocov3": Method(
        _build_mocov3,
        two_views=True,
        exact_accumulation=False,
        coupling="MoCo v3 contrasts each image with every key of the (global) batch and normalises its heads with "
        "BatchNorm over the batch, so accumulating smaller batches gives fewer negatives and other statistics.",
    ),
    "barlowtwins": Method(
        _build_barlowtwins,
        two_views=True,
        exact_accumulation=False,
        coupling="Barlow Twins estimates an 8192×8192 cross-correlation and BatchNorm statistics over the (global) "
        "batch, so accumulating smaller batches changes the loss itself.",
    ),
    "mae": Method(_build_mae, two_views=False, exact_accumulation=True, coupling=""),
}


# -------------------------------------------------------------------------------------------------- datasets
class _Tagged(Dataset):
    """``dataset``'s samples with a ``role`` (monitor frame, probe bank, probe query) and a ``label`` (-1: none)."""

    def __init__(self, dataset: Dataset, role: int, labels: list[int] | None = None) -> None:
        self.dataset, self.role, self.labels = dataset, role, labels

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        sample = self.dataset[i]
        label = -1 if self.labels is None else self.labels[i]
        return {"image": sample["image"], "role": torch.tensor(self.role), "label": torch.tensor(label)}


class _Concat(Dataset):
    def __init__(self, parts: list[Dataset]) -> None:
        self.parts = [p for p in parts if len(p)]
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, i: int) -> dict:
        part = int(np.searchsorted(self.offsets, i, side="right")) - 1
        return self.parts[part][i - int(self.offsets[part])]


# ------------------------------------------------------------------------------------------------- evaluator
class PretrainEvaluator(Evaluator):
    """Health signals from backbone features: RankMe and the spread of the l2-normalised features of the fixed
    monitor frames (collapse → rank 1 and spread 0), and the kNN probe's top-1 accuracy (bank → queries)."""

    def __init__(self, k: int, temperature: float, num_classes: int | None) -> None:
        super().__init__()
        self.k, self.t, self.num_classes = k, temperature, num_classes
        self.feats, self.roles, self.labels = [], [], []

    def process(self, batch: dict, outputs: torch.Tensor) -> None:
        self.feats.append(outputs.float().cpu())
        self.roles.append(batch["role"].cpu())
        self.labels.append(batch["label"].cpu())

    def compute(self) -> tuple[dict[str, float], list[dict]]:
        feats, roles, labels = torch.cat(self.feats), torch.cat(self.roles), torch.cat(self.labels)
        metrics: dict[str, float] = {}
        if not torch.isfinite(
            feats
        ).all():  # a diverged (or broken) backbone: say so, do not crash the monitor
            bad = int((~torch.isfinite(feats)).any(dim=1).sum())
            log.warning(
                "%d of %d images give non-finite backbone features: monitors are NaN", bad, len(feats)
            )
            return {"rankme": math.nan, "feature_std": math.nan, "knn_top1": math.nan}, []
        monitor = feats[roles == MONITOR]
        if len(monitor) > 1:
            metrics["rankme"] = rankme(monitor)
            metrics["feature_std"] = l2_normalized_std(monitor)
        bank, query = roles == BANK, roles == QUERY
        if bank.any() and query.any():
            metrics["knn_top1"] = knn_top1(
                feats[bank],
                labels[bank],
                feats[query],
                labels[query],
                k=self.k,
                t=self.t,
                num_classes=self.num_classes,
            )
        return metrics, []


# ------------------------------------------------------------------------------------------------------ task
class PretrainTask(Task):
    """``task=pretrain``: one ``ssl`` method's recipe for one backbone. It has no test split: a run ends with the
    exported backbone (:meth:`finish`)."""

    name = "pretrain"
    tests = False

    @classmethod
    def check_config(cls, cfg: DictConfig) -> None:
        """A method × backbone pair with a published recipe, trained (not evaluated), from scratch or from a row."""
        if cfg.backbone.name not in cfg.ssl.backbones:
            pairs = "; ".join(
                f"ssl={name} with backbone={'|'.join(o.get('backbones', []))}"
                for name, o in group_options("ssl").items()
            )
            raise ConfigError(
                f"ssl={cfg.ssl.name} has no recipe for backbone={cfg.backbone.name}; valid pairs: {pairs}"
            )
        if cfg.mode != "train":
            raise ConfigError(
                f"task=pretrain runs in mode=train only (mode={cfg.mode}): its output is the exported backbone, "
                "which a finetuning task evaluates (pretraining=hyperkvasir_<method> paths.weights_dir=<run>/export)"
            )
        if cfg.frozen:
            raise ConfigError(
                "frozen=true freezes the backbone, which task=pretrain trains: drop frozen=true"
            )

    def __init__(
        self,
        name: str,
        method: str,
        recipe: DictConfig,
        tiny_heads: DictConfig,
        input_size: int,
        monitor: str | None,
        monitor_mode: str,
        probe: DictConfig,
        reconstructions: int = 8,
        export_dir: str | None = None,
    ) -> None:
        self.method_name, self.method = method, METHODS[method]
        self.recipe = _plain(recipe)
        self.tiny_heads = _plain(tiny_heads)
        self.input_size = int(input_size)
        self.monitor, self.monitor_mode = monitor, monitor_mode
        self.probe = probe
        self.reconstructions = int(reconstructions)
        self.export_dir = export_dir
        self.exact_accumulation = self.method.exact_accumulation
        self.accumulation_note = self.method.coupling
        self.momentum = float(self.recipe.get("momentum", 0.0))
        self.num_classes: int | None = None
        self.n_frames = 0  # frames of the training set (build_datasets)
        self.monitor_frames: Dataset | None = None  # fixed frames, evaluation transform

    # ------------------------------------------------------------------------------------------------ model
    def build_model(self, backbone: DictConfig, pretraining: DictConfig, frozen: bool, weights_dir: str):
        self.backbone = backbone
        self.family = backbone.family
        self.pretraining_name = pretraining.name
        # MoCo v3 and Barlow Twins start from torchvision's resnet50(zero_init_residual=True): each block's last
        # BatchNorm at zero (timm's default; the finetuning rows keep torchvision's plain init instead)
        extra = {"zero_init_last": True} if self.family == "resnet" else {}
        encoder = create_backbone(backbone, self.input_size, **extra)
        tiny = self.tiny_heads if backbone.get("tiny", False) else None
        from_scratch = not pretraining.pretrained or not pretraining.get("load", True)
        if not from_scratch:  # continued pretraining from a row's weights (e.g. ImageNet → HyperKvasir)
            load_pretrained(encoder, pretraining, backbone, weights_dir, self.input_size)
        elif self.family == "vit" and self.recipe.get("vit_init") == "mocov3":
            mocov3_init(encoder)
            fix_sincos_pos_embed(encoder, layout="mocov3")
        model = self.method.build(encoder, self.recipe, tiny, self.family)
        reinitialised = isinstance(model, MaskedAutoencoder)  # MAE's construction initialises its encoder
        if not from_scratch and reinitialised:
            load_pretrained(model.encoder, pretraining, backbone, weights_dir, self.input_size)
        n = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad)
        log.info(
            "%s %s%s: %.1f M trainable parameters (%s)",
            self.method_name,
            backbone.name,
            " (tiny)" if tiny else "",
            n / 1e6,
            "from scratch" if from_scratch else f"from pretraining={pretraining.name}",
        )
        return model

    def trainable_parameters(self, model: nn.Module) -> list[tuple[str, nn.Parameter]]:
        """What the optimiser updates: never the momentum copy (MoCo v3), which follows the encoder by EMA."""
        return model.trainable_named_parameters()

    def facts(self) -> dict[str, Any]:
        return {**super().facts(), "ssl": self.method_name}

    def features(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """The backbone feature the probe and the monitors read: ResNet global pool, MoCo v3 ViT's CLS token after
        the final norm, MAE's mean patch token (its CLS is weak for kNN by design: MAE's
        ``models_mae.py`` trains only patch reconstructions)."""
        if isinstance(model, MaskedAutoencoder):
            return mean_patch_features(model.encoder, images)
        return model.encoder(images)

    # ---------------------------------------------------------------------------------------------- data
    def _views(self):
        r, size = self.recipe, self.input_size
        if not self.method.two_views:
            return mae_view(size=size, crop_scale=tuple(r["crop_scale"]), interpolation=r["interpolation"])
        return byol_views(
            crop_min=r["crop_min"],
            interpolation=r["interpolation"],
            size=size,
            flip_first=r.get("view_order") == "barlowtwins",
        )

    def build_datasets(self, reader, splits, cache_dir, progress) -> dict[str, Dataset]:
        """``train``: every frame of ``reader`` through the recipe's views. ``val``: the monitor frames (evenly
        spaced over the frames) and, where the labelled images are present, the probe's bank and queries."""
        data: dict[str, Dataset] = {}
        if "train" in splits:
            data["train"] = pretrain_dataset(reader, self._views(), cache_dir, progress)
            self.n_frames = len(data["train"])
        if "val" in splits:
            frames = pretrain_dataset(reader, probe_view(self.input_size), cache_dir, progress)
            count = min(int(self.probe.monitor_frames), len(frames))
            picks = np.linspace(0, len(frames) - 1, count).round().astype(int).tolist() if count else []
            self.monitor_frames = torch.utils.data.Subset(frames, picks)
            parts: list[Dataset] = [_Tagged(self.monitor_frames, MONITOR)]
            parts += self._probe_sets(cache_dir, progress)
            data["val"] = _Concat(parts)
        return data

    def _probe_sets(self, cache_dir, progress) -> list[Dataset]:
        from ssl4gie.utils.conf import instantiate_checked

        try:
            reader = instantiate_checked(self.probe.data)
        except DatasetError as e:
            log.warning(
                "kNN probe off: %s. Pretraining goes on with RankMe and the feature spread only",
                str(e).split(" Expected layout")[0].rstrip("."),
            )
            return []
        splits = reader.splits()
        self.num_classes = len(reader.class_names)
        parts = []
        for split, role in (("train", BANK), ("val", QUERY)):
            indices = splits[split]
            dataset = HyperKvasirDataset(
                reader, indices, self.input_size, train=False, cache_dir=cache_dir, progress=progress
            )
            parts.append(_Tagged(dataset, role, [reader.labels[i] for i in indices]))
        log.info(
            "kNN probe every %d epochs: %s train (%d images) → val (%d), k=%d; never the test split",
            int(self.probe.every),
            reader.name,
            len(parts[0]),
            len(parts[1]),
            int(self.probe.k),
        )
        return parts

    @torch.no_grad()
    def baseline_model(self, model: nn.Module, device: torch.device) -> nn.Module:
        """The initial encoder as the monitors should see it: a copy whose BatchNorm running statistics are
        estimated on the monitor frames. At initialisation they are 0 / 1, and any training in train mode would
        'beat' that baseline just by updating them (measured on the tiny ResNet: kNN 0.34 → 0.53 from the
        statistics alone). A ViT (no BatchNorm) is returned as is."""
        norms = [m for m in model.encoder.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not norms or not self.monitor_frames or not len(self.monitor_frames):
            return model
        copy_ = copy.deepcopy(model)
        for m in copy_.encoder.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()
                m.momentum = None  # a cumulative average over the frames
        copy_.encoder.train()
        frames = self.monitor_frames
        for start in range(0, len(frames), 64):
            images = torch.stack([frames[i]["image"] for i in range(start, min(start + 64, len(frames)))])
            copy_.encoder(images.to(device))
        log.info(
            "epoch-0 monitors: BatchNorm statistics of the initial encoder estimated on %d frames",
            len(frames),
        )
        return copy_.eval()

    # -------------------------------------------------------------------------------------------- training
    def on_step(self, step: int, total_steps: int) -> dict[str, float]:
        if self.method_name != "mocov3":
            return {}
        self.momentum = momentum_cosine(step, total_steps, float(self.recipe["momentum"]))
        return {"momentum": self.momentum}

    def training_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        if not self.method.two_views:
            out = model(batch["image"])
        elif self.method_name == "mocov3":
            out = model(batch["view1"], batch["view2"], self.momentum)
        else:
            out = model(batch["view1"], batch["view2"])
        return {k: v for k, v in out.items() if isinstance(v, torch.Tensor) and v.ndim == 0}

    def predict(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        return self.features(model, batch["image"])

    def evaluator(self, keep: int = 0, save_dir: Path | None = None) -> Evaluator:
        return PretrainEvaluator(int(self.probe.k), float(self.probe.temperature), self.num_classes)

    def draw(self, kept: list[dict], folder: Path) -> list[Path]:
        return []

    # ---------------------------------------------------------------------------------------------- output
    def export_name(self) -> str:
        """The file name the finetuning row ``pretraining=hyperkvasir_<method>`` looks for in paths.weights_dir."""
        row = group_options("pretraining").get(f"hyperkvasir_{self.method_name}", {})
        return row.get("files", {}).get(self.backbone.name, f"{self.method_name}_{self.backbone.name}.pth")

    def export_state(self, model: nn.Module) -> dict:
        """The backbone in its published format: MAE's ``{"model": ...}`` with the decoder, a plain torchvision
        ResNet-50 state dict (MoCo v3, Barlow Twins), timm ViT names without head (MoCo v3's base encoder)."""
        if isinstance(model, MaskedAutoencoder):
            return export.export_mae(model)
        if self.family == "resnet":
            return export.export_resnet(model.encoder)
        return export.export_vit(model.encoder)

    def finish(self, model: nn.Module, output_dir: Path, device: torch.device) -> dict:
        """Write ``export/<file>`` (and a copy in ``task.export_dir``), check it loads through the finetuning
        reader into a fresh backbone with every tensor, draw MAE reconstructions; return facts for metrics.json."""
        model.eval()
        path = output_dir / "export" / self.export_name()
        export.write_export(self.export_state(model), path)
        fresh = create_backbone(self.backbone, self.input_size)
        receipt = load_backbone_weights(fresh, path, expected_arch=self.backbone.name)
        reference = model.encoder.state_dict()
        mismatched = [
            k for k, v in fresh.state_dict().items() if not torch.equal(v.cpu(), reference[k].cpu())
        ]
        if mismatched:
            raise RuntimeError(f"the export {path} does not reproduce the encoder: {mismatched[:5]}")
        log.info(
            "exported the backbone to %s (%d tensors, read back as %s); finetune from it with paths.weights_dir=%s",
            path,
            receipt.loaded,
            receipt.format,
            path.parent,
        )
        facts = {"export": str(path), "export_tensors": len(fresh.state_dict()), "n_frames": self.n_frames}
        if self.export_dir:
            target = Path(self.export_dir).expanduser() / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.tmp")
            shutil.copyfile(path, tmp)
            tmp.replace(target)
            log.info("copied the export to %s (task.export_dir)", target)
            facts["export_copy"] = str(target)
        if isinstance(model, MaskedAutoencoder) and self.reconstructions and self.monitor_frames is not None:
            facts["figures"] = [str(self.draw_reconstructions(model, output_dir / "figures", device))]
        write_json(output_dir / "export" / "pretrain.json", {**facts, "method": self.method_name})
        return facts

    @torch.no_grad()
    def draw_reconstructions(self, model: MaskedAutoencoder, folder: Path, device: torch.device) -> Path:
        frames = self.monitor_frames
        count = min(self.reconstructions, len(frames))
        images = torch.stack([frames[i]["image"] for i in range(count)]).to(device)
        out = model(images, generator=torch.Generator(device=device).manual_seed(0))
        path = folder / "mae_reconstructions.png"
        draw_mae_reconstructions(
            images,
            out["pred"],
            out["mask"],
            model.patch_size,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            path=path,
            max_images=count,
            norm_pix=model.norm_pix_loss,
        )
        return path
