"""``logger=tensorboard``: event files in the run folder, so ``tensorboard --logdir outputs/sweeps/<sweep>`` shows
every cell of a sweep as one run named by its folder.

Scalars are plotted against the epoch (``global_step`` = the history row's ``epoch``); the optimiser step is a
scalar of its own (``step``). A resumed run writes a new event file into the same folder, which TensorBoard
shows as the one run continuing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

from ssl4gie.loggers.base import RunInfo, RunLogger, numeric, require

log = logging.getLogger(__name__)


class TensorBoardLogger(RunLogger):
    """Writes ``log_dir`` (None: ``<run folder>/tensorboard``) with ``torch.utils.tensorboard``."""

    def __init__(self, log_dir: str | None = None, flush_secs: int = 30) -> None:
        self.log_dir = log_dir
        self.flush_secs = int(flush_secs)
        self.writer = None
        self._epoch = 0

    def start(self, run: RunInfo) -> None:
        require("tensorboard", "tensorboard", "tensorboard")  # torch's writer needs it; say which extra
        from torch.utils.tensorboard import SummaryWriter

        folder = Path(self.log_dir) if self.log_dir else run.output_dir / "tensorboard"
        self.writer = SummaryWriter(log_dir=str(folder), flush_secs=self.flush_secs)
        # four spaces: a Markdown code block, so TensorBoard's text tab keeps the YAML's indentation
        text = yaml.safe_dump(run.config, sort_keys=False, default_flow_style=False)
        self.writer.add_text("config", "\n".join("    " + line for line in text.splitlines()))
        self.writer.add_text("run", f"{run.name} (group {run.group}, fingerprint {run.fingerprint})")
        log.info("TensorBoard: %s", folder)

    def log_epoch(self, row: Mapping[str, Any]) -> None:
        self._epoch = int(row["epoch"])
        for key, value in numeric(row):
            if key != "epoch":
                self.writer.add_scalar(key, value, global_step=self._epoch)

    def log_final(self, metrics: Mapping[str, float], epoch: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(f"final/{key}", value, global_step=epoch)

    def log_figures(self, paths: Sequence[Path]) -> None:
        for path in paths:
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("RGB"))
            self.writer.add_image(f"figures/{path.stem}", pixels, global_step=self._epoch, dataformats="HWC")

    def finish(self, status: str) -> None:
        if self.writer is not None:
            self.writer.add_text("status", status)
            self.writer.close()
            self.writer = None
