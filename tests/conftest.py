"""Shared fixtures: compose the *real* Hydra config, shrink it (tiny backbones, few epochs), run it in-process.

Tests exercise the same code path as ``python run.py ...``; only sizes differ.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def tmp_paths(tmp_path: Path) -> list[str]:
    """Overrides that keep every data, cache and output path of a run inside the test's folder."""
    return [
        f"paths.data_dir={tmp_path / 'data'}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"paths.output_root={tmp_path / 'outputs'}",
        f"paths.weights_dir={tmp_path / 'weights'}",
    ]


@pytest.fixture(scope="session")
def kvasir_tiny(tmp_path_factory) -> Path:
    """A small synthetic dataset in the exact Kvasir-SEG layout (shared, read-only)."""
    from ssl4gie.data.synthetic import write_kvasir_seg

    return write_kvasir_seg(
        tmp_path_factory.mktemp("data") / "Kvasir-SEG", n=12, seed=0, size_range=(64, 112)
    )
