"""Barlow Twins (Zbontar et al. 2021) around any timm backbone: a shared encoder and projector for both views."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ssl4gie.ssl.heads import mlp
from ssl4gie.ssl.losses import barlow_twins, normalised_std


class BarlowTwins(nn.Module):
    """``encoder → projector`` applied to each view separately (BatchNorm statistics per view, as the official
    code), then :func:`ssl4gie.ssl.losses.barlow_twins`.

    ``encoder`` is a timm backbone built with ``num_classes=0`` (``feature_dim``-wide pooled features);
    ``projector`` holds :func:`ssl4gie.ssl.heads.mlp` keyword arguments without ``in_dim`` (official:
    ``hidden_dim=8192, out_dim=8192, layers=3, last_bn=False``). ``exact_gradient`` is passed to the loss: True
    gives the global-batch gradient under DDP, False the official ``1/world_size`` one.
    """

    def __init__(
        self,
        encoder: nn.Module,
        feature_dim: int,
        projector: Mapping[str, Any],
        lambd: float = 0.0051,
        exact_gradient: bool = True,
    ) -> None:
        super().__init__()
        self.lambd = float(lambd)
        self.exact_gradient = bool(exact_gradient)
        self.encoder = encoder
        self.projector = mlp(feature_dim, **projector)

    def trainable_named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """``(name, parameter)`` of encoder and projector that require grad (same contract as MoCoV3's)."""
        return [(name, p) for name, p in self.named_parameters() if p.requires_grad]

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> dict[str, torch.Tensor]:
        """Loss of two augmented views (same images, same order) and detached monitors: ``on_diag``, ``off_diag``,
        ``mean_diag`` (from the loss), ``embedding_std`` (:func:`normalised_std` of the view-1 projections) and
        ``features`` (the encoder's view-1 output)."""
        f1, f2 = self.encoder(x1), self.encoder(x2)
        z1, z2 = self.projector(f1), self.projector(f2)
        out = barlow_twins(z1, z2, lambd=self.lambd, exact_gradient=self.exact_gradient)
        out["embedding_std"] = normalised_std(z1.detach())
        out["features"] = f1.detach()
        return out
