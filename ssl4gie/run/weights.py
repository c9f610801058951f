"""Which initial weights a run starts from, and their identity: the content of the file, not its path.

Light on purpose (no torch, no timm): the run-folder resolvers call it while Hydra resolves ``hydra.run.dir`` /
``hydra.sweep.subdir``, in the driver and in every submitit job process.

Where the weights come from, in order: ``pretraining.checkpoint`` (an explicit file), ``paths.weights_dir/<files.
<backbone>>`` (the documented file name of the row), then timm's hub tag (``hub.<backbone>``) where the row has one.
A file is identified by the sha256 of its bytes, so a moved or renamed identical file is the same experiment and a
replaced file is another; hub weights are identified by their tag; ``pretraining=random`` has no weights.
"""

from __future__ import annotations

import glob
import hashlib
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ssl4gie.errors import ConfigError, Ssl4gieError

# Hex digits of the sha256 in folder names. Two files of one row sharing a tag is unlikely below ~10^4 files, and
# harmless: the fingerprint holds the full hash, so neither run would take the other's metrics or last.pt.
TAG_LENGTH = 8


@dataclass(frozen=True)
class InitialWeights:
    """The initialisation of a run's backbone: a local ``file`` with its ``sha256``, a timm ``hub`` tag, or
    neither (random initialisation, or -- only from a non-strict lookup -- a file that is missing)."""

    file: Path | None = None
    sha256: str | None = None
    hub: str | None = None

    @property
    def tag(self) -> str:
        """Short content tag for folder names; empty unless the weights are a local file."""
        return self.sha256[:TAG_LENGTH] if self.sha256 else ""

    def identity(self) -> dict[str, str] | None:
        """What the run fingerprint records: the file's content hash, the hub tag, or None (no weights)."""
        if self.sha256:
            return {"sha256": self.sha256}
        if self.hub:
            return {"timm_hub": self.hub}
        return None


# TensorFlow checkpoints come as <prefix>.index + <prefix>.data-NNNNN-of-NNNNN (+ .meta), or a SavedModel folder.
_TF_SUFFIX = re.compile(r"\.(index|meta|data-\d{5}-of-\d{5})$")
#: The documented one-off conversion of a TensorFlow SimCLR v2 checkpoint (ssl4gie.models.checkpoints.simclrv2 reads
#: the result); the converter names the architecture from the checkpoint folder's name, e.g. r50_1x_sk0/.
SIMCLRV2_CONVERSION = (
    "git clone https://github.com/Separius/SimCLRv2-Pytorch && pip install tensorflow && "
    "python SimCLRv2-Pytorch/convert.py <folder>/r50_1x_sk0/model.ckpt-<step> (writes r50_1x_sk0.pth: pass it as "
    "pretraining.checkpoint=r50_1x_sk0.pth or save it under the row's file name)"
)
TENSORFLOW_CONVERSION = (
    "Convert a SimCLR v2 checkpoint once with SimCLRv2-Pytorch (README: Pretrained weights, SimCLR v2): "
    + SIMCLRV2_CONVERSION
    + "; ssl4gie reads its output. Any other TensorFlow model: convert it into a torchvision ResNet-50 state dict "
    "(keys conv1.*, bn1.*, layer1-4.*) and pass that .pth file."
)


def is_tensorflow_checkpoint(path: Path) -> bool:
    """True for a TensorFlow checkpoint (an index/data/meta shard, or the prefix naming them) or SavedModel folder."""
    if path.is_dir():
        return (path / "saved_model.pb").is_file()
    if _TF_SUFFIX.search(path.name) or path.suffix == ".pb":
        return True
    return not path.exists() and any(path.parent.glob(glob.escape(path.name) + ".index"))


def _missing(pretraining: DictConfig, backbone: DictConfig, weights_dir: str | Path) -> ConfigError:
    name = (pretraining.get("files") or {}).get(backbone.name)
    where = Path(weights_dir) / name if name else "a file"
    url = (pretraining.get("urls") or {}).get(backbone.name, "the row's source (README: Pretrained weights)")
    return ConfigError(
        f"pretraining={pretraining.name} needs the weights of backbone={backbone.name}: download {url} "
        f"to {where} (paths.weights_dir), or pass pretraining.checkpoint=PATH"
    )


def weights_file(pretraining: DictConfig, backbone: DictConfig, weights_dir: str | Path) -> Path | None:
    """The local file to load for this row, or None if it should come from the hub (or the row is random).

    Raises :class:`ConfigError` naming the option when ``pretraining.checkpoint`` is not a file, or when the row
    needs a file that is not in ``weights_dir`` and has no hub tag.
    """
    if not pretraining.pretrained:
        return None
    if pretraining.get("checkpoint"):
        path = Path(str(pretraining.checkpoint)).expanduser()
        if is_tensorflow_checkpoint(path):
            raise ConfigError(
                f"pretraining.checkpoint={path} is a TensorFlow checkpoint; ssl4gie reads PyTorch files only. "
                + TENSORFLOW_CONVERSION
            )
        if not path.is_file():
            raise ConfigError(f"pretraining.checkpoint={path} does not exist (expected a weight file)")
        return path
    name = (pretraining.get("files") or {}).get(backbone.name)
    if name and (Path(weights_dir) / name).is_file():
        return Path(weights_dir) / name
    if (pretraining.get("hub") or {}).get(backbone.name):
        return None
    raise _missing(pretraining, backbone, weights_dir)


_hashes: dict[tuple, str] = {}
_hashes_lock = threading.Lock()


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of the file's bytes, computed once per process per version of the file.

    The cache key is (resolved path, device, inode, size, mtime_ns): a file replaced in place or by a rename
    changes at least one of them, so it is hashed again. (Not persisted across processes on purpose: a copy made
    with ``cp -p`` keeps size and mtime, and hashing even a 350 MB file takes about a second.)
    """
    resolved = Path(path).expanduser().resolve()
    st = resolved.stat()
    key = (str(resolved), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    with _hashes_lock:
        if key in _hashes:
            return _hashes[key]
    digest = hashlib.sha256()
    with open(resolved, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    with _hashes_lock:
        _hashes[key] = digest.hexdigest()
    return _hashes[key]


def initial_weights(
    pretraining: DictConfig, backbone: DictConfig, weights_dir: str | Path, strict: bool = True
) -> InitialWeights:
    """The weights this row loads, found exactly as the loader finds them (:func:`weights_file`).

    ``strict=False`` never raises for a missing or unreadable file (it returns ``InitialWeights()``); the loader
    reports the problem later with its own message.
    """
    try:
        path = weights_file(pretraining, backbone, weights_dir)
    except Ssl4gieError:
        if strict:
            raise
        return InitialWeights()
    if path is None:
        hub = (pretraining.get("hub") or {}).get(backbone.name) if pretraining.pretrained else None
        return InitialWeights(hub=hub)
    try:
        return InitialWeights(file=path, sha256=file_sha256(path))
    except OSError as e:
        if strict:
            raise ConfigError(
                f"weights file {path} cannot be read ({e.strerror or e}); expected a readable file "
                "(pretraining.checkpoint or paths.weights_dir)"
            ) from None
        return InitialWeights()


def run_weights(cfg: DictConfig, strict: bool = True) -> InitialWeights:
    """:func:`initial_weights` of a composed run config (``pretraining``, ``backbone``, ``paths.weights_dir``)."""
    return initial_weights(cfg.pretraining, cfg.backbone, cfg.paths.weights_dir, strict=strict)


def run_dir_tag(root: Any) -> str:
    """Content tag of the run config ``root`` for its folder name; empty when it has no local weights or they
    cannot be found or read. Never raises: a folder name must not fail, the run reports bad settings itself."""
    try:
        if OmegaConf.select(root, "pretraining") is None or OmegaConf.select(root, "backbone") is None:
            return ""
        return run_weights(root, strict=False).tag
    except Exception:
        return ""
