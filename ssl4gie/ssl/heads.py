"""Projection and prediction heads of MoCo v3 and Barlow Twins: one MLP builder, the recipes are its arguments.

Recipes (MoCo v3's ``moco/builder.py``, Barlow Twins' ``main.py``), as keyword arguments after ``in_dim``:

* MoCo v3 ResNet-50 projector ``(2048, 4096, 256, layers=2, last_bn=True)``, predictor ``(256, 4096, 256,
  layers=2, last_bn=False)``;
* MoCo v3 ViT-B projector ``(768, 4096, 256, layers=3, last_bn=True)``, predictor ``(256, 4096, 256, layers=2,
  last_bn=True)``;
* Barlow Twins projector ``(2048, 8192, 8192, layers=3, last_bn=False)`` (its loss standardises the output).
"""

from __future__ import annotations

from torch import nn

from ssl4gie.errors import ConfigError


def mlp(
    in_dim: int,
    hidden_dim: int,
    out_dim: int,
    layers: int,
    last_bn: bool,
    last_bn_affine: bool = False,
    bias: bool = False,
) -> nn.Sequential:
    """``layers`` Linear layers ``in_dim → hidden_dim → … → out_dim``, each but the last followed by
    BatchNorm1d + ReLU; then, if ``last_bn``, a final ``BatchNorm1d(out_dim, affine=last_bn_affine)``.

    ``bias=False`` (the official heads) leaves the Linear layers without bias: a BatchNorm follows each of them
    except possibly the last. Module indices are stable (Linear, BN, ReLU, …), so state-dict keys are predictable.
    """
    if layers < 1:
        raise ConfigError(f"an MLP head needs layers >= 1, got layers={layers}")
    modules: list[nn.Module] = []
    for i in range(layers):
        last = i == layers - 1
        d_in = in_dim if i == 0 else hidden_dim
        d_out = out_dim if last else hidden_dim
        modules.append(nn.Linear(d_in, d_out, bias=bias))
        if not last:
            modules += [nn.BatchNorm1d(d_out), nn.ReLU(inplace=True)]
        elif last_bn:
            modules.append(nn.BatchNorm1d(d_out, affine=last_bn_affine))
    return nn.Sequential(*modules)
