"""MoCo v3 (Chen, Xie & He 2021) around any timm backbone: base and momentum branches, no queue.

Reimplemented from the published recipe (facebookresearch/moco-v3: ``CONFIG.md``, the paper), not from its
CC BY-NC reference code.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from ssl4gie.ssl.heads import mlp
from ssl4gie.ssl.losses import mocov3_contrastive, normalised_std


class MoCoV3(nn.Module):
    """Base branch ``encoder → projector → predictor``; momentum branch ``momentum_encoder → momentum_projector``.

    ``encoder`` is a timm backbone built with ``num_classes=0`` whose forward returns ``feature_dim``-wide pooled
    features (ResNet global pool, ViT CLS token after the final norm). ``projector`` and ``predictor`` are
    :func:`ssl4gie.ssl.heads.mlp` keyword arguments without ``in_dim`` (``hidden_dim``, ``out_dim``, ``layers``,
    ``last_bn``); the predictor's input is the projector's ``out_dim``.

    The momentum branch is a deep copy of encoder + projector taken here, with ``requires_grad=False``; it changes
    only through :meth:`update_momentum`. Build the optimiser from :meth:`trainable_named_parameters`, which leaves
    the momentum branch out even if someone switches its ``requires_grad`` back on. Freezing the ViT patch
    embedding (MoCo v3's stop-grad) is the caller's job, before or after construction.
    """

    def __init__(
        self,
        encoder: nn.Module,
        feature_dim: int,
        projector: Mapping[str, Any],
        predictor: Mapping[str, Any],
        tau: float,
    ) -> None:
        super().__init__()
        self.tau = float(tau)
        self.encoder = encoder
        self.projector = mlp(feature_dim, **projector)
        self.predictor = mlp(int(projector["out_dim"]), **predictor)
        self.momentum_encoder = copy.deepcopy(encoder)
        self.momentum_projector = copy.deepcopy(self.projector)
        for p in self._momentum_parameters():
            p.requires_grad_(False)

    def _momentum_parameters(self) -> Iterator[nn.Parameter]:
        yield from self.momentum_encoder.parameters()
        yield from self.momentum_projector.parameters()

    def _base_parameters(self) -> Iterator[nn.Parameter]:
        yield from self.encoder.parameters()
        yield from self.projector.parameters()

    def trainable_named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """``(name, parameter)`` of encoder, projector and predictor that require grad; never the momentum branch."""
        return [
            (f"{prefix}.{name}", p)
            for prefix in ("encoder", "projector", "predictor")
            for name, p in getattr(self, prefix).named_parameters()
            if p.requires_grad
        ]

    @torch.no_grad()
    def update_momentum(self, m: float) -> None:
        """θ_k ← m·θ_k + (1 − m)·θ_q for every parameter of the momentum branch (encoder and projector).

        Buffers are left alone, as in the official code: the momentum branch runs in training mode, so its
        BatchNorm layers normalise with batch statistics and keep their own running statistics, which nothing uses.
        """
        momentum, base = list(self._momentum_parameters()), list(self._base_parameters())
        # foreach: one kernel per op over all tensors instead of ~2 per tensor (ViT-B has ~150 of them).
        torch._foreach_mul_(momentum, m)
        torch._foreach_add_(momentum, [p.detach() for p in base], alpha=1.0 - m)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, momentum: float) -> dict[str, torch.Tensor]:
        """Symmetrised loss ``ctr(q1, k2) + ctr(q2, k1)`` of two augmented views (same images, same order).

        The momentum update with coefficient ``momentum`` runs here, after the queries and before the keys (the
        official order); keys are computed without gradient. Returns ``loss`` and the detached monitors
        ``contrastive_acc`` (mean top-1 of the two directions), ``embedding_std`` (:func:`normalised_std` of the
        view-1 queries) and ``features`` (the encoder's view-1 output, e.g. for RankMe).
        """
        f1, f2 = self.encoder(x1), self.encoder(x2)
        q1, q2 = self.predictor(self.projector(f1)), self.predictor(self.projector(f2))
        with torch.no_grad():
            self.update_momentum(momentum)
            k1 = self.momentum_projector(self.momentum_encoder(x1))
            k2 = self.momentum_projector(self.momentum_encoder(x2))
        loss12, acc12 = mocov3_contrastive(q1, k2, self.tau)
        loss21, acc21 = mocov3_contrastive(q2, k1, self.tau)
        return {
            "loss": loss12 + loss21,
            "contrastive_acc": (acc12 + acc21) / 2,
            "embedding_std": normalised_std(q1.detach()),
            "features": f1.detach(),
        }
