"""Official pretrained checkpoints, read as published and converted into timm backbone key names.

Every pretraining framework of the study ships its weights in its own layout (as published by
facebookresearch/moco-v3, facebookresearch/barlowtwins, facebookresearch/mae, torchvision and timm): MoCo v3
``.pth.tar`` training checkpoints, Barlow Twins ``resnet50.pth`` / ``checkpoint.pth``, MAE ``{'model': ...}``
files, and plain torchvision / timm state dicts. The backbones themselves are always timm models, so each layout is
a module of its own with a pair of *pure* functions, ``detect`` and ``convert`` into timm's key names (STYLE habit
2), registered in :mod:`.formats`; every load ends with a :class:`LoadReceipt` that says how many tensors were
loaded and which were dropped by which rule (habit 3). Anything the rules do not explain -- a missing, unexpected
or mis-shaped key -- is an error, never a warning.

Modules: :mod:`.io` (safe reading), :mod:`.rules` (keep/drop rules, architecture guess), one module per format
(:mod:`.mocov3`, :mod:`.barlowtwins`, :mod:`.mae`, :mod:`.plain`), :mod:`.formats` (the table), :mod:`.load`
(strict load into a model, with the receipt).
"""

from ssl4gie.models.checkpoints.formats import CONVERTERS, detect_format, to_timm_state_dict
from ssl4gie.models.checkpoints.io import CheckpointError, read_checkpoint
from ssl4gie.models.checkpoints.load import LoadReceipt, load_backbone_weights
from ssl4gie.models.checkpoints.rules import (
    CLASSIFIER_HEAD,
    MAE_DECODER,
    MOMENTUM_ENCODER,
    PREDICTOR,
    PROJECTOR,
    TRAINING_STATE,
    Dropped,
    StateDict,
    guess_architecture,
)

__all__ = [
    "CLASSIFIER_HEAD",
    "CONVERTERS",
    "MAE_DECODER",
    "MOMENTUM_ENCODER",
    "PREDICTOR",
    "PROJECTOR",
    "TRAINING_STATE",
    "CheckpointError",
    "Dropped",
    "LoadReceipt",
    "StateDict",
    "detect_format",
    "guess_architecture",
    "load_backbone_weights",
    "read_checkpoint",
    "to_timm_state_dict",
]
