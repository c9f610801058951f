"""Run a test file's worker function on several spawned processes, one per rank.

pytest imports test files in ``importlib`` mode, under names that a fresh process cannot import, so
``torch.multiprocessing.spawn`` could not unpickle a worker defined in a test file. :func:`spawn_ranks` sends the
file's path and the worker's name instead: each process loads the file itself and calls the worker with its rank
first. (The helpers package reaches the processes through ``sys.path``, which spawn passes on.)
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch.multiprocessing as mp


def _run(rank: int, path: str, name: str, args: tuple[Any, ...]) -> None:
    module_name = f"spawned_{Path(path).stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling look the module up by name
    spec.loader.exec_module(module)
    getattr(module, name)(rank, *args)


def spawn_ranks(worker: Callable[..., None], nprocs: int, *args: Any) -> None:
    """Call ``worker(rank, *args)`` in ``nprocs`` spawned processes and wait for all of them (an error in one
    is raised here)."""
    path = inspect.getsourcefile(worker)
    assert path is not None, worker
    mp.spawn(_run, args=(path, worker.__name__, args), nprocs=nprocs, join=True)
