"""``python -m ssl4gie.bench``: how fast the data pipeline and the training loop run on this machine.

Builds everything from the real config and the public pieces a run uses (``task.build_model``,
``task.build_datasets``, :class:`~ssl4gie.engine.trainer.Trainer`), so engine features (channels_last, fused
AdamW, ``trainer.compile``, GPU-side augmentation) are measured as a run gets them. It measures

* loader throughput (images/s) of our pipeline — the decode-once cache + training augmentation through the
  engine's DataLoader — and of the study's per-sample pipeline (:mod:`ssl4gie.data.study_pipeline`) on the same
  files, batch size and workers; the one-time cache build is timed separately;
* training throughput with the real loader and with the same batches already in memory, and the fraction of step
  time spent waiting for the next batch;
* evaluation throughput (val split, eval mode, no grad), and peak memory.

Without ``--data`` it writes synthetic data in the Kvasir-SEG layout once (images of 500–1350 px, like the real
set) and reuses it. Results go to a JSON file (``--out``) and a table on stdout::

    python -m ssl4gie.bench                       # segmentation, ResNet-50, 224², batch 8, CPU or GPU
    python -m ssl4gie.bench --backbone vit_b --device cuda --compile --batch-size 48 --steps 50

The study's eight task × backbone cases on a GPU (peak memory, MFU, loader images/s per worker, CPU cores per GPU)
are :mod:`ssl4gie.bench.gpu`.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch.utils.data import Dataset, Subset

from ssl4gie.bench.common import (
    BatchFeed,
    compose,
    loader_throughputs,
    machine_info,
    run_command,
    sync,
    train_throughput,
)
from ssl4gie.errors import ConfigError
from ssl4gie.run.checks import validate
from ssl4gie.utils.conf import group_options, instantiate_checked

log = logging.getLogger("ssl4gie.bench")

SYNTHETIC_SIZE_RANGE = (500, 1350)  # like Kvasir-SEG's 332×487 … 1920×1072 images


def _study_segmentation(task, reader) -> Dataset:
    from ssl4gie.data.study_pipeline import StudySegmentationDataset

    return StudySegmentationDataset(
        [reader.items[i] for i in reader.splits()["train"]], task.input_size, True
    )


#: Tasks the benchmark knows: task name -> the study's train-split pipeline over the same reader (the baseline).
STUDY_PIPELINES: dict[str, Callable] = {"segmentation": _study_segmentation}

RESULT_KEYS = (
    "loader_images_per_s",
    "study_loader_images_per_s",
    "loader_speedup",
    "train_images_per_s",
    "train_images_per_s_preloaded",
    "data_wait_fraction",
    "eval_images_per_s",
    "peak_rss_mb",
    "cache_build_s",
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m ssl4gie.bench",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--task", default="segmentation", choices=sorted(STUDY_PIPELINES))
    backbones = sorted(group_options("backbone")) or None  # None: conf/ not beside the package
    p.add_argument("--backbone", default="resnet50", choices=backbones, help="a conf/backbone option")
    p.add_argument(
        "--tiny", action="store_true", help="the shrunken backbone (backbone.tiny=true), for smoke tests"
    )
    p.add_argument("--input-size", type=int, default=None, help="network input size; unset: the task's")
    p.add_argument("--data", default=None, help="a Kvasir-SEG folder; unset: synthetic data in --work-dir")
    p.add_argument("--n-images", type=int, default=600, help="synthetic images to write (without --data)")
    p.add_argument(
        "--work-dir", default=None, help="synthetic data and scratch; unset: <paths.cache_dir>/bench"
    )
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", default="auto", help="data-loader workers (auto = one per core, at most 8)")
    p.add_argument(
        "--steps", type=int, default=10, help="timed training steps, with the loader and again preloaded"
    )
    p.add_argument("--warmup", type=int, default=2, help="untimed training steps first")
    p.add_argument("--loader-batches", type=int, default=25, help="timed batches per loader pipeline")
    p.add_argument("--eval-images", type=int, default=32, help="val images evaluated (timed)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--precision", default="auto", help="auto | fp32 | bf16 | fp16")
    p.add_argument("--compile", action="store_true", help="trainer.compile=true (torch.compile)")
    p.add_argument(
        "--threads", type=int, default=None, help="torch threads of this process; unset: torch's choice"
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other config override, e.g. --set task.decoder.resnet.head.channels=64",
    )
    p.add_argument("--out", default=None, help="JSON file; unset: <paths.output_root>/bench/<settings>.json")
    p.add_argument("--loader-only", action="store_true", help="measure the loaders only (no training, eval)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    for name in ("batch_size", "steps", "loader_batches", "eval_images", "n_images"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.warmup < 0:
        p.error("--warmup must be at least 0")
    return args


def compose_case(args: argparse.Namespace) -> DictConfig:
    """The real config (conf/) with the benchmark's settings; paths are filled in by :func:`run`."""
    overrides = [
        f"task={args.task}",
        f"backbone={args.backbone}",
        "pretraining=random",  # weights do not change the speed; random needs no download
        f"trainer.batch_size={args.batch_size}",
        "trainer.accum_steps=1",
        f"trainer.num_workers={args.workers}",
        f"trainer.device={args.device}",
        f"trainer.precision={args.precision}",
        f"trainer.progress={not args.no_progress}",
        *([f"backbone.tiny={args.tiny}"] if args.tiny else []),
        *([f"task.input_size={args.input_size}"] if args.input_size else []),
        *args.overrides,
    ]
    cfg = compose(overrides)
    if args.compile:
        if "compile" not in cfg.trainer:
            raise ConfigError(
                "--compile: this version's trainer has no trainer.compile option (conf/trainer)"
            )
        cfg.trainer.compile = True
    return cfg


def eval_throughput(trainer, dataset: Dataset, images: int) -> float:
    """Images/s of ``trainer.evaluate`` on the first ``images`` samples: loader (its start included, as in every
    evaluation), forward, metrics. The model's kernels are warm from training."""
    subset = Subset(dataset, range(min(len(dataset), images)))
    sync(trainer.device)
    start = time.perf_counter()
    trainer.evaluate(subset, "val")
    sync(trainer.device)
    return len(subset) / (time.perf_counter() - start)


def _point_at_data(cfg: DictConfig, args: argparse.Namespace, work: Path) -> None:
    """``--data``, or synthetic Kvasir-SEG-layout data in ``work`` written by the reader on first use."""
    with open_dict(cfg):
        if args.data:
            cfg.dataset.root, cfg.dataset.synthetic = str(Path(args.data).expanduser()), None
        else:
            lo, hi = SYNTHETIC_SIZE_RANGE
            cfg.dataset.root = str(work / f"{cfg.dataset.name}-n{args.n_images}-{lo}to{hi}px")
            cfg.dataset.synthetic = {"n": args.n_images, "seed": 0, "size_range": [lo, hi]}


def measure(args: argparse.Namespace, trainer, data: dict[str, Dataset], study_set: Dataset) -> dict:
    """The throughput measurements (images/s) and the data-wait fraction; None for those ``--loader-only`` skips."""
    progress = not args.no_progress
    warm = max(1, trainer.num_workers)
    batches = min(args.loader_batches, len(trainer.loader(data["train"], train=True)) - warm)
    if batches < 1:
        raise ConfigError(
            f"the train split has {len(data['train'])} samples: too few for --batch-size "
            f"{args.batch_size} with {trainer.num_workers} workers; use more --n-images"
        )
    log.info(
        "loader throughput: %d batches of %d, ours and the study's in turns", batches, trainer.micro_batch
    )
    loaders = {
        "ours": trainer.loader(data["train"], train=True),
        "study": trainer.loader(study_set, train=True),
    }
    rates = loader_throughputs(loaders, batches, warm, progress=progress)
    ours, study = rates["ours"], rates["study"]
    results = {
        "loader_images_per_s": ours,
        "study_loader_images_per_s": study,
        "loader_speedup": ours / study,
        "loader_batches": batches,
        "train_images_per_s": None,
        "train_images_per_s_preloaded": None,
        "data_wait_fraction": None,
        "eval_images_per_s": None,
    }
    if args.loader_only:
        return results
    log.info(
        "training: %d warm-up + %d timed steps with the loader, then the same batches preloaded",
        args.warmup,
        args.steps,
    )
    feed = BatchFeed(trainer.loader(data["train"], train=True), keep=True)
    results["train_images_per_s"], wait = train_throughput(trainer, feed, args.steps, args.warmup)
    results["data_wait_fraction"] = min(max(wait, 0.0), 1.0)
    feed.iterator = None
    # the same timed batches again, from memory (the model is warm by now)
    preloaded = BatchFeed(feed.kept[args.warmup :])
    results["train_images_per_s_preloaded"], _ = train_throughput(trainer, preloaded, args.steps, warmup=0)
    log.info("evaluation: %d val images", min(len(data["val"]), args.eval_images))
    results["eval_images_per_s"] = eval_throughput(trainer, data["val"], args.eval_images)
    return results


def run(args: argparse.Namespace) -> dict:
    """Run every measurement; returns the results dict (also written to the JSON file)."""
    from ssl4gie.engine.trainer import Trainer
    from ssl4gie.utils.io import write_json
    from ssl4gie.utils.seed import seed_everything

    cfg = compose_case(args)
    validate(cfg)
    work = Path(args.work_dir or Path(cfg.paths.cache_dir) / "bench").expanduser()
    _point_at_data(cfg, args, work)
    work.mkdir(parents=True, exist_ok=True)
    # A fresh decoded cache in a scratch folder each time, so that its build is timed; removed at the end.
    scratch = Path(tempfile.mkdtemp(prefix="run-", dir=work))
    try:
        seed_everything(cfg.seed)
        torch.backends.cudnn.benchmark = not cfg.trainer.deterministic
        task = instantiate_checked(cfg.task, _recursive_=False)
        existed = Path(cfg.dataset.root).exists()
        if not existed:
            log.info("first run: writing %d synthetic images once (about 0.2 s of CPU each)", args.n_images)
        start = time.perf_counter()
        reader = instantiate_checked(cfg.dataset)
        data_write_s = None if existed else time.perf_counter() - start
        model = task.build_model(cfg.backbone, cfg.pretraining, cfg.frozen, cfg.paths.weights_dir)
        trainer = Trainer(cfg.trainer, task, model, scratch / "output", cfg.seed, "bench", {})
        # as ssl4gie.run.pipeline does: tasks that can augment on the GPU leave it out of the loader workers there
        task.augment_on_device = trainer.augment_on_device
        machine = machine_info(trainer.device)

        log.info("building the decoded-sample cache (timed; a run builds it once per dataset)")
        start = time.perf_counter()
        data = task.build_datasets(reader, ["train", "val"], str(scratch / "decoded"), not args.no_progress)
        cache_build_s = time.perf_counter() - start

        results = measure(args, trainer, data, STUDY_PIPELINES[args.task](task, reader))
        batches = results.pop("loader_batches")
        results.update(
            peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # KiB on Linux
            peak_cuda_mb=torch.cuda.max_memory_allocated(trainer.device) / 2**20
            if trainer.device.type == "cuda"
            else None,
            cache_build_s=cache_build_s,
            data_write_s=data_write_s,
        )
        results = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in results.items()}
        machine["load_avg_end"] = round(os.getloadavg()[0], 2)
        results["machine"] = machine
        results["settings"] = {
            "task": task.name,
            "backbone": cfg.backbone.name,
            "tiny": bool(cfg.backbone.get("tiny", False)),
            "input_size": getattr(task, "input_size", None),
            "batch_size": trainer.micro_batch,
            "workers": trainer.num_workers,
            "steps": args.steps,
            "warmup_steps": args.warmup,
            "loader_batches": batches,
            "eval_images": min(len(data["val"]), args.eval_images),
            "train_images": len(data["train"]),
            "dataset_images": len(reader.items),
            "device": str(trainer.device),
            "precision": str(trainer.dtype).removeprefix("torch."),
            "compile": bool(cfg.trainer.get("compile", False)),
            "data": str(reader.root),
            "synthetic": not args.data,
            "trainer": OmegaConf.to_container(cfg.trainer, resolve=True),
        }
        out = Path(args.out) if args.out else Path(cfg.paths.output_root) / "bench" / _default_name(results)
        write_json(out, results)
        results["out"] = str(out)
        return results
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _default_name(results: dict) -> str:
    s = results["settings"]
    tiny = "-tiny" if s["tiny"] else ""
    return f"{s['task']}-{s['backbone']}{tiny}-{s['input_size']}px-b{s['batch_size']}-{s['device'].replace(':', '')}.json"


#: The printed table: (label, result key, format).
TABLE = (
    ("loader, ours (decode-once cache + train aug)", "loader_images_per_s", "{:.1f} images/s"),
    ("loader, study pipeline (decode every sample)", "study_loader_images_per_s", "{:.1f} images/s"),
    ("loader speed-up", "loader_speedup", "{:.2f}×"),
    ("training, real loader", "train_images_per_s", "{:.2f} images/s"),
    ("training, batches preloaded in memory", "train_images_per_s_preloaded", "{:.2f} images/s"),
    ("data wait (share of step time)", "data_wait_fraction", "{:.1%}"),
    ("evaluation (val, no grad)", "eval_images_per_s", "{:.2f} images/s"),
    ("decoded-cache build (one-time, whole dataset)", "cache_build_s", "{:.1f} s"),
    ("peak RSS (main process)", "peak_rss_mb", "{:.0f} MB"),
    ("peak CUDA memory", "peak_cuda_mb", "{:.0f} MB"),
)


def format_table(results: dict) -> str:
    s, m = results["settings"], results["machine"]
    where = m["gpu"] or f"{m['cpu_model']}, {m['cpus_available']} cores"
    rows = [
        (label, "—" if results.get(key) is None else fmt.format(results[key])) for label, key, fmt in TABLE
    ]
    head = (
        f"{s['task']} / {s['backbone']}{' (tiny)' if s['tiny'] else ''}, {s['input_size']}², batch "
        f"{s['batch_size']}, {s['workers']} workers, {s['device']} {s['precision']}"
        f"{', compiled' if s['compile'] else ''} — {where}, load {m['load_avg_start']}→{m['load_avg_end']}"
    )
    width = max(len(r[0]) for r in rows)
    return "\n".join([head, *(f"  {k:<{width}}  {v}" for k, v in rows), f"  → {results['out']}"])


def main(argv: list[str] | None = None) -> dict:
    """Command-line entry point; returns the results dict. A user error exits with status 2."""
    return run_command(parse_args(argv), run, format_table)


if __name__ == "__main__":
    main()
