"""``python -m ssl4gie.bench.pretrain``: how fast self-supervised pretraining (``task=pretrain``) runs here.

For one ``--ssl`` × ``--backbone`` pair (or ``--all`` four: MoCo v3 × ResNet-50 / ViT-B, Barlow Twins × ResNet-50,
MAE × ViT-B) it composes the real config (``conf/task/pretrain.yaml``, ``conf/ssl/``), builds the model, the
frames and the :class:`~ssl4gie.engine.trainer.Trainer` as ``python run.py task=pretrain`` does, and measures

* the loader: two-view (MAE: one-view) samples/s per worker from the decode-once cache and from decoding the JPEG
  at every access (the official codebases' way), through a DataLoader with ``--loader-workers`` workers
  (:func:`ssl4gie.data.unlabelled.bench_views`; the two take turns, ``--loader-rounds`` times, so that a change
  in the machine's load hits both alike); the one-time cache build over every frame is timed separately;
* training images/s through ``Trainer.train_epoch`` with the real loader and with the same batches already in
  memory (the model-bound rate), the share of step time spent waiting for the next batch, the FLOPs of one step
  (forward + backward, momentum branch included) and, on a GPU with a known bf16 peak, MFU at the preloaded rate;
* the loader workers one device needs: preloaded images/s ÷ the cache loader's images/s per worker;
* peak memory: the main process's peak RSS per pair (the kernel's high-water mark, reset before each pair where
  Linux allows it) and, on CUDA, ``torch.cuda.max_memory_allocated``.

An image is a frame: a two-view method pushes two 224² views of it (and a momentum branch) through the model, so
its images/s are not comparable to MAE's or to finetuning's one-view images/s. The optimiser's per-step
learning-rate schedule is left out (it does not change the speed).

``--batch-size`` sets both ``trainer.batch_size`` and ``trainer.micro_batch`` (MoCo v3 and Barlow Twins refuse
gradient accumulation: the whole batch goes through one forward pass). Without ``--data`` it writes ``--frames``
synthetic frames in HyperKvasir's unlabelled layout once (sides 576–1280 px, like the release's 720×576 …
1280×1024; about 0.3–0.8 s of CPU each) into ``--work-dir`` and reuses them; the training loader cycles them.
Results: a table on stdout and JSON (``--out``, rewritten after every pair).

``--loader`` measures the loaders alone, no model: for every pair, frames/s per worker (``--loader-workers``, batches
of ``--loader-batch``, the median of ``--loader-rounds`` turns) of each mode of :func:`loader_modes`: views made in
the workers (``worker``) from the decode-once cache (``--decode-size``, 320 by default: the former default) and
from the full-size JPEG; views made on the device (``device``: the workers read the bytes and draw the parameters)
from the JPEG's bytes and from the cache; for the device modes also the rate of the device's decode + augmentation
step. ``--json`` gets a list of records (:data:`LOADER_KEYS`)::

    python -m ssl4gie.bench.pretrain                                  # MoCo v3 × ResNet-50, 224², batch 8
    python -m ssl4gie.bench.pretrain --ssl mae --backbone vit_b --batch-size 128 --device cuda
    python -m ssl4gie.bench.pretrain --all --device cuda --batch-size 128 --workers 8 --frames 32
    python -m ssl4gie.bench.pretrain --all --tiny --input-size 64 --device cpu    # a functional check
    python -m ssl4gie.bench.pretrain --loader --all --json loader.json            # the loaders' records
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from ssl4gie.bench import common, flops
from ssl4gie.bench.common import (
    BatchFeed,
    build_trainer,
    compose,
    fmt,
    machine_info,
    rounded,
    sync,
    train_throughput,
)
from ssl4gie.errors import ConfigError
from ssl4gie.run.checks import validate
from ssl4gie.utils.conf import group_options, instantiate_checked

log = logging.getLogger("ssl4gie.bench")

SYNTHETIC_SIZE_RANGE = (576, 1280)  # like the HyperKvasir unlabelled frames (720×576 … 1280×1024)


def ssl_pairs() -> list[tuple[str, str]]:
    """Every (ssl, backbone) pair with a recipe in ``conf/ssl/`` (its ``backbones`` list), in the files' order."""
    return [(s, b) for s, opt in group_options("ssl").items() for b in opt.get("backbones", [])]


#: Every key of a pair's record in the JSON (None where not measured: CUDA memory and MFU on a CPU, a failure).
#: Rates are frames/s; ``params_m``: every parameter of the model, the momentum copy included.
PAIR_KEYS = (
    "ssl", "backbone", "status", "error", "views", "gpu_augment", "params_m", "loader_cache_per_worker",
    "loader_jpeg_per_worker", "loader_speedup", "train_images_per_s", "train_images_per_s_preloaded",
    "data_wait_fraction", "step_time_s", "train_flops_per_image", "mfu", "workers_per_device",
    "peak_rss_mb", "peak_cuda_mb", "elapsed_s",
)  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m ssl4gie.bench.pretrain",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    pairs = ssl_pairs()
    p.add_argument("--ssl", default="mocov3", choices=sorted({s for s, _ in pairs}) or None)
    p.add_argument("--backbone", default="resnet50", choices=sorted({b for _, b in pairs}) or None)
    p.add_argument(
        "--all", action="store_true", help="every pair: " + ", ".join(f"{s}×{b}" for s, b in pairs)
    )
    p.add_argument("--tiny", action="store_true", help="shrunken backbone and heads (backbone.tiny=true)")
    p.add_argument("--input-size", type=int, default=None, help="view size (task.input_size); unset: 224")
    p.add_argument("--batch-size", type=int, default=8, help="trainer.batch_size = trainer.micro_batch")
    p.add_argument(
        "--steps", type=int, default=10, help="timed optimiser steps, with the loader and preloaded"
    )
    p.add_argument("--warmup", type=int, default=2, help="untimed optimiser steps first")
    p.add_argument(
        "--workers", default="auto", help="training loader workers (auto = one per core, at most 8)"
    )
    p.add_argument("--loader-workers", type=int, default=1, help="workers of the per-worker loader rates")
    p.add_argument(
        "--loader-frames", type=int, default=64, help="samples per loader pass (the frames are cycled)"
    )
    p.add_argument(
        "--loader-rounds", type=int, default=3, help="cache and JPEG loader passes, in turns, per pair"
    )
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--precision", default="auto", help="auto | fp32 | bf16 | fp16")
    p.add_argument("--compile", action="store_true", help="trainer.compile=true (torch.compile)")
    p.add_argument("--frames", type=int, default=64, help="synthetic frames to write once (without --data)")
    p.add_argument(
        "--frame-sizes",
        default=f"{SYNTHETIC_SIZE_RANGE[0]},{SYNTHETIC_SIZE_RANGE[1]}",
        help="LO,HI: side range of the synthetic frames in px",
    )
    p.add_argument("--data", default=None, help="a folder of frames (any depth); unset: synthetic frames")
    p.add_argument(
        "--work-dir", default=None, help="synthetic frames and scratch; unset: <paths.cache_dir>/bench"
    )
    p.add_argument("--peak-tflops", type=float, default=None, help="the GPU's bf16 dense peak, for MFU")
    p.add_argument("--max-minutes", type=float, default=None, help="skip the pairs left after this long")
    p.add_argument("--threads", type=int, default=None, help="torch threads of this process")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument(
        "--out", default=None, help="JSON file; unset: <paths.output_root>/bench/pretrain-<...>.json"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--loader",
        action="store_true",
        help="only the loader: frames/s per worker of every mode (views made in the workers or on the device) and "
        "decode size, one record each (--json)",
    )
    p.add_argument("--json", default=None, help="--loader: the records' JSON file (a list of records)")
    p.add_argument("--loader-batch", type=int, default=32, help="--loader: samples per batch")
    p.add_argument("--loader-batches", type=int, default=4, help="--loader: timed batches per mode and round")
    p.add_argument(
        "--decode-size",
        type=int,
        default=None,
        help="--loader: the decode-once size to compare (unset: 320, the former default)",
    )
    args = p.parse_args(argv)
    for name in (
        "batch_size",
        "steps",
        "frames",
        "loader_frames",
        "loader_rounds",
        "loader_batch",
        "loader_batches",
    ):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.warmup < 0 or args.loader_workers < 0:
        p.error("--warmup and --loader-workers must be at least 0")
    try:
        lo, hi = (int(s) for s in args.frame_sizes.split(","))
    except ValueError:
        p.error(f"--frame-sizes {args.frame_sizes!r}: give LO,HI in pixels, e.g. 576,1280")
    if not 32 <= lo <= hi:
        p.error(f"--frame-sizes {args.frame_sizes!r}: need 32 <= LO <= HI")
    args.frame_sizes = (lo, hi)
    args.pairs = pairs if args.all else [(args.ssl, args.backbone)]
    if not args.all and pairs and (args.ssl, args.backbone) not in pairs:
        p.error(
            f"--ssl {args.ssl} has no recipe for --backbone {args.backbone}; pairs: "
            + ", ".join(f"{s}×{b}" for s, b in pairs)
        )
    return args


def compose_pair(ssl: str, backbone: str, args: argparse.Namespace) -> DictConfig:
    """The real ``task=pretrain`` config of one pair with the benchmark's settings and data (validated)."""
    batch = args.batch_size
    overrides = [
        "task=pretrain",
        f"ssl={ssl}",
        f"backbone={backbone}",
        *(["dataset=image_folder"] if args.data else []),
        "pretraining=random",  # weights do not change the speed; random needs no download
        f"trainer.batch_size={batch}",
        f"trainer.micro_batch={batch}",  # the trainer refuses a per-process batch above it (MoCo v3, BT)
        "trainer.accum_steps=1",
        f"trainer.num_workers={args.workers}",
        f"trainer.device={args.device}",
        f"trainer.precision={args.precision}",
        f"trainer.progress={not args.no_progress}",
        *(["backbone.tiny=true"] if args.tiny else []),
        *([f"task.input_size={args.input_size}"] if args.input_size else []),
        *args.overrides,
    ]
    cfg = compose(overrides, f"ssl={ssl} backbone={backbone}")
    with open_dict(cfg):
        cfg.dataset.root, cfg.dataset.synthetic = data_root(args, cfg), None
        if "expected_count" in cfg.dataset:
            cfg.dataset.expected_count = None  # not the release: no warning about a partial unzip
        if args.compile:
            cfg.trainer.compile = True
    validate(cfg)
    return cfg


def work_dir(args: argparse.Namespace, cfg: DictConfig) -> Path:
    return Path(args.work_dir or Path(cfg.paths.cache_dir) / "bench").expanduser()


def data_root(args: argparse.Namespace, cfg: DictConfig) -> str:
    if args.data:
        return str(Path(args.data).expanduser())
    lo, hi = args.frame_sizes
    return str(work_dir(args, cfg) / f"hyperkvasir-unlabelled-n{args.frames}-{lo}to{hi}px")


def write_frames(args: argparse.Namespace, cfg: DictConfig) -> float | None:
    """Write the synthetic frames once (:func:`ssl4gie.data.synthetic.write_hyperkvasir_unlabelled`); returns the
    seconds it took, None when they (or ``--data``) were already there."""
    from ssl4gie.data.synthetic import write_hyperkvasir_unlabelled

    root = Path(data_root(args, cfg))
    if args.data or root.exists():
        return None
    log.info("first run: writing %d synthetic frames of %d–%d px once", args.frames, *args.frame_sizes)
    start = time.perf_counter()
    write_hyperkvasir_unlabelled(root, count=args.frames, seed=0, size_range=args.frame_sizes)
    return time.perf_counter() - start


class FrameFeed(BatchFeed):
    """:class:`~ssl4gie.common.BatchFeed` for pretraining batches, which carry ``view1``/``view2`` (two-view
    methods) or ``image`` (MAE): it counts frames by the batch's ``meta`` list, so both count alike."""

    @staticmethod
    def count(batch: dict) -> int:
        return len(batch["meta"])


def reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark of this process's RSS (``/proc/self/clear_refs``, Linux ≥ 4.0), so the
    next :func:`peak_rss_mb` is the peak since now; False where that is not possible (then the peak is since
    the process started)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """Peak RSS of this process in MB: ``VmHWM`` (resettable), else ``getrusage`` (since start)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure_pair(cfg: DictConfig, args: argparse.Namespace, cache_dir: Path, scratch: Path, peak) -> dict:
    """One pair's measurements (keys of :data:`PAIR_KEYS`). Raises on failure (OOM included)."""
    from ssl4gie.data.unlabelled import DEFAULT_DECODE_SIZE, bench_views

    task, reader, trainer = build_trainer(cfg, scratch / "output", "bench-pretrain")
    train_set = task.build_datasets(reader, ["train"], str(cache_dir), False)["train"]
    facts = {
        "views": len(task.method.inputs),
        # views decoded and augmented on the device (trainer.gpu_augment): then the training rates include it
        "gpu_augment": bool(trainer.augment_on_device),
        "params_m": sum(p.numel() for p in trainer.model.parameters()) / 1e6,
    }

    # (1) the loader: the task's own views over the reader's frames, cycled to --loader-frames samples
    n = max(args.loader_frames, 2)
    files = [reader.files[i % len(reader.files)] for i in range(n)]
    loader_batch = max(1, min(args.batch_size, n // 4))  # at least 3 timed batches per pass
    log.info(
        "loader: %d samples in batches of %d, cache and JPEG in turns, %d worker(s)",
        n,
        loader_batch,
        args.loader_workers,
    )
    # Cache and JPEG passes alternate, --loader-rounds times, so that a change in the machine's load during the
    # benchmark hits both alike; each rate is samples over seconds summed across the rounds.
    seconds = {"cache_per_worker": 0.0, "jpeg_per_worker": 0.0}
    for _ in range(args.loader_rounds):
        rates = bench_views(
            n=n,
            workers=args.loader_workers,
            batch_size=loader_batch,
            files=files,
            decode_size=reader.decode_size or DEFAULT_DECODE_SIZE,
            views=train_set.views,
            cache_dir=cache_dir / "views",  # built by the first round of the first pair, read by the others
        )
        for key in seconds:
            seconds[key] += 1 / rates[key]  # seconds per sample (per worker)
    cache, jpeg = (args.loader_rounds / seconds[k] for k in ("cache_per_worker", "jpeg_per_worker"))
    facts.update(loader_cache_per_worker=cache, loader_jpeg_per_worker=jpeg, loader_speedup=cache / jpeg)

    # (2) training: one long-lived loader over the frames cycled, then the same batches from memory
    micro = trainer.micro_batch
    # fit() sets this (a run's epoch length); MoCo v3's momentum schedule reads it at every step
    trainer.steps_per_epoch = max(1, len(train_set) // micro)
    need = (args.warmup + args.steps + 2) * micro  # + the FLOP-counted step and a spare
    feed = FrameFeed(trainer.loader(common.repeated(train_set, need), train=True), keep=True)
    log.info(
        "training: %d warm-up + %d timed steps of %d frames with the loader", args.warmup, args.steps, micro
    )
    rate, wait = train_throughput(trainer, feed, args.steps, args.warmup)
    elapsed = feed.images / rate
    flop_batch = next(iter(feed.take(1)))
    feed.iterator = None  # ends the workers
    preloaded = FrameFeed(feed.kept[args.warmup : args.warmup + args.steps])
    preloaded_rate, _ = train_throughput(trainer, preloaded, args.steps, warmup=0)
    flops_per_image = flops.step_flops(trainer, flop_batch) / len(flop_batch["meta"])
    cuda = trainer.device.type == "cuda"
    facts.update(
        train_images_per_s=rate,
        train_images_per_s_preloaded=preloaded_rate,
        data_wait_fraction=min(max(wait, 0.0), 1.0),
        step_time_s=elapsed / args.steps,
        train_flops_per_image=flops_per_image,
        mfu=flops.mfu(flops_per_image, preloaded_rate, peak),
        workers_per_device=preloaded_rate / facts["loader_cache_per_worker"],
        peak_cuda_mb=torch.cuda.max_memory_allocated(trainer.device) / 2**20 if cuda else None,
    )
    return facts


def _empty(ssl: str, backbone: str) -> dict:
    return {**dict.fromkeys(PAIR_KEYS), "ssl": ssl, "backbone": backbone}


def run_pair(ssl: str, backbone: str, args: argparse.Namespace, cache_dir: Path, work: Path, peak) -> dict:
    """:func:`measure_pair` with the failure handling: an OOM or an error is recorded and the next pair runs."""
    record = _empty(ssl, backbone)
    start = time.perf_counter()
    cuda = torch.cuda.is_available() and args.device != "cpu"
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    reset_peak_rss()
    log.info("pair ssl=%s backbone=%s", ssl, backbone)
    try:
        with tempfile.TemporaryDirectory(prefix="pair-", dir=work) as scratch:
            cfg = compose_pair(ssl, backbone, args)
            record.update(measure_pair(cfg, args, cache_dir, Path(scratch), peak), status="ok")
    except ConfigError:
        raise  # the user's settings: every pair would fail alike
    except Exception as e:
        record["status"] = "oom" if common.is_oom(e) else "error"
        text = str(e).strip()
        record["error"] = f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"
        if record["status"] == "oom":
            log.warning("%s / %s ran out of GPU memory: %s", ssl, backbone, record["error"])
        else:
            log.exception("%s / %s failed", ssl, backbone)
    record["peak_rss_mb"] = peak_rss_mb()
    # outside the except block the traceback, and with it the pair's model and tensors, is gone: free them now
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    record["elapsed_s"] = time.perf_counter() - start
    return record


def run(args: argparse.Namespace) -> dict:
    """Every selected pair; returns the results (also written to the JSON file after each pair)."""
    from ssl4gie.data.unlabelled import pretrain_dataset
    from ssl4gie.engine.device import resolve_device, resolve_precision, resolve_workers
    from ssl4gie.utils.io import write_json

    start = time.perf_counter()
    first = compose_pair(*args.pairs[0], args)  # also checks the settings before anything is written
    work = work_dir(args, first)
    work.mkdir(parents=True, exist_ok=True)
    data_write_s = write_frames(args, first)
    device = resolve_device(args.device)
    peak, peak_source = flops.peak_tflops(device, args.peak_tflops)
    tiny = "-tiny" if args.tiny else ""
    size = int(first.task.input_size)
    name = "all" if args.all else f"{args.ssl}-{args.backbone}"
    out = Path(
        args.out
        or Path(first.paths.output_root)
        / "bench"
        / f"pretrain-{name}{tiny}-{size}px-b{args.batch_size}-{str(device).replace(':', '')}.json"
    )
    # A fresh decoded cache in a scratch folder each time, so that its build is timed; removed at the end.
    scratch = Path(tempfile.mkdtemp(prefix="pretrain-", dir=work))
    try:
        reader = instantiate_checked(first.dataset)
        tick = time.perf_counter()
        pretrain_dataset(reader, None, str(scratch / "decoded"), not args.no_progress)
        cache_build_s = time.perf_counter() - tick
        results = {
            "suite": "pretrain",
            "machine": machine_info(device),
            "peak_tflops": peak,
            "peak_source": peak_source,
            "settings": {
                "pairs": [f"{s}×{b}" for s, b in args.pairs],
                "tiny": args.tiny,
                "input_size": size,
                "batch_size": args.batch_size,
                "steps": args.steps,
                "warmup_steps": args.warmup,
                "workers": resolve_workers(args.workers),
                "loader_workers": args.loader_workers,
                "loader_frames": args.loader_frames,
                "loader_rounds": args.loader_rounds,
                "device": str(device),
                "precision": str(resolve_precision(args.precision, device)).removeprefix("torch."),
                "compile": args.compile,
                "decode_size": reader.decode_size,
                "frames": len(reader.files),
                "frame_sizes": None if args.data else list(args.frame_sizes),
                "data": str(reader.root),
                "synthetic": not args.data,
                "overrides": args.overrides,
                "trainer": OmegaConf.to_container(first.trainer, resolve=True),
            },
            "data_write_s": data_write_s,
            "cache_build_s": cache_build_s,
            "pairs": [],
        }
        for ssl, backbone in args.pairs:
            if args.max_minutes is not None and time.perf_counter() - start > 60 * args.max_minutes:
                record = {**_empty(ssl, backbone), "status": "skipped", "error": "--max-minutes reached"}
            else:
                record = run_pair(ssl, backbone, args, scratch / "decoded", work, peak)
            results["pairs"].append(rounded(record))
            results["elapsed_s"] = round(time.perf_counter() - start, 1)
            # the machine is shared with whatever else runs: the load at each pair's end goes with the numbers
            results["machine"]["load_avg_end"] = round(os.getloadavg()[0], 2)
            write_json(out, rounded(results))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    results = rounded(results)
    results["out"] = str(out)
    return results


# ---------------------------------------------------------------------------------------------------- --loader
#: Every key of a loader record (``--loader --json``; one per method × backbone × mode × decode size). Rates are
#: frames/s; ``frames_per_s_per_worker`` is the median over ``rounds`` (``rounds_frames_per_s_per_worker``).
#: ``device_frames_per_s``: device mode only, the rate of the decode + augmentation step on ``device`` (one
#: process: what the training process adds to each step).
LOADER_KEYS = (
    "method", "backbone", "mode", "decode_size", "frames_per_s_per_worker", "rounds_frames_per_s_per_worker",
    "device_frames_per_s", "device", "workers", "batch_size", "input_size", "frame_sizes", "machine",
)  # fmt: skip


def loader_modes(decode_size: int) -> tuple[tuple[str, int | None], ...]:
    """(mode, decode size) pairs measured: the views made in the workers from the decode-once cache (the former
    default) and from the full-size JPEG (the official codebases' way), made on the device from the JPEG's bytes
    (the default on a GPU) and from the decode-once cache."""
    return (("worker", decode_size), ("worker", None), ("device", None), ("device", decode_size))


def device_rate(dataset, views, device: torch.device, batch_size: int, batches: int) -> float:
    """Frames/s of :meth:`DeviceViews.apply` on ``device`` (decode + augmentation of ``batches`` batches already
    collated, after one untimed batch)."""
    from ssl4gie.data.collate import collate
    from ssl4gie.engine.trainer import to_device

    prepared = []
    for b in range(batches + 1):
        batch = collate([dataset[(b * batch_size + j) % len(dataset)] for j in range(batch_size)])
        prepared.append(to_device(batch, device))
    count, seconds = 0, 0.0
    for b, batch in enumerate(prepared):
        sync(device)
        start = time.perf_counter()
        views.apply(batch["frame"], batch["crops"], batch["params"])
        sync(device)
        if b:  # the first batch warms up (kernels, allocator)
            seconds += time.perf_counter() - start
            count += len(batch["meta"])
    return count / seconds


def run_loader(args: argparse.Namespace) -> dict:
    """``--loader``: the records of every selected pair (also written to ``--json``)."""
    from ssl4gie.data.device_views import DeviceViews
    from ssl4gie.data.ssl_transforms import worker_views
    from ssl4gie.data.unlabelled import DEFAULT_DECODE_SIZE, PretrainImages
    from ssl4gie.engine.device import resolve_device
    from ssl4gie.utils.io import write_json

    start = time.perf_counter()
    first = compose_pair(*args.pairs[0], args)
    work = work_dir(args, first)
    work.mkdir(parents=True, exist_ok=True)
    write_frames(args, first)
    reader = instantiate_checked(first.dataset)
    device = resolve_device(args.device)
    machine = machine_info(device)
    files = [reader.files[i % len(reader.files)] for i in range(max(args.loader_frames, args.loader_batch))]
    decode_size = args.decode_size or DEFAULT_DECODE_SIZE
    out = Path(args.json or Path(first.paths.output_root) / "bench" / "pretrain-loader.json")
    records = []
    scratch = Path(tempfile.mkdtemp(prefix="loader-", dir=work))
    try:
        for ssl, backbone in args.pairs:
            cfg = compose_pair(ssl, backbone, args)
            task = instantiate_checked(cfg.task, _recursive_=False)
            recipes = task.method.views(task.recipe, task.input_size)
            datasets, views = {}, {}
            for mode, size in loader_modes(decode_size):
                views[mode, size] = DeviceViews(recipes) if mode == "device" else worker_views(recipes)
                cache = scratch / "decoded" if size else None  # built once, by the first pair; not timed
                datasets[mode, size] = PretrainImages(
                    files, views[mode, size], size, cache, "bench", progress=False, root=reader.root
                )
            log.info(
                "loader: %s × %s, %d modes in turns, %d round(s)",
                ssl,
                backbone,
                len(datasets),
                args.loader_rounds,
            )
            rates = common.dataset_rates(
                datasets, args.loader_workers, args.loader_batch, args.loader_batches, args.loader_rounds
            )
            for (mode, size), per_round in rates.items():
                on_device = None
                if mode == "device":  # a CPU standing in for the device is slow at it: a smaller batch there
                    batch = args.loader_batch if device.type == "cuda" else min(args.loader_batch, 8)
                    on_device = device_rate(datasets[mode, size], views[mode, size], device, batch, 2)
                records.append(
                    {
                        "method": ssl,
                        "backbone": backbone,
                        "mode": mode,
                        "decode_size": size,
                        "frames_per_s_per_worker": common.median(per_round),
                        "rounds_frames_per_s_per_worker": per_round,
                        "device_frames_per_s": on_device,
                        "device": str(device) if mode == "device" else None,
                        "workers": args.loader_workers,
                        "batch_size": args.loader_batch,
                        "input_size": int(task.input_size),
                        "frame_sizes": None if args.data else list(args.frame_sizes),
                        "machine": machine,
                    }
                )
            machine["load_avg_end"] = round(os.getloadavg()[0], 2)
            write_json(out, rounded(records))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {"records": rounded(records), "out": str(out), "elapsed_s": round(time.perf_counter() - start, 1)}


def format_loader_table(results: dict) -> str:
    """The loader records as a table, with each pair's device-at-full-size ÷ worker-from-cache ratio."""
    from tabulate import tabulate

    records = results["records"]
    baseline = {
        (r["method"], r["backbone"]): r["frames_per_s_per_worker"]
        for r in records
        if r["mode"] == "worker" and r["decode_size"] is not None
    }
    rows = [
        [
            r["method"], r["backbone"], r["mode"], r["decode_size"] or "full",
            fmt(r["frames_per_s_per_worker"], ".1f"),
            " / ".join(f"{v:.1f}" for v in r["rounds_frames_per_s_per_worker"]),
            fmt(r["frames_per_s_per_worker"] / baseline[r["method"], r["backbone"]], ".1f") + "×",
            fmt(r["device_frames_per_s"], ".1f"),
        ]
        for r in records
    ]  # fmt: skip
    headers = [
        "method", "backbone", "mode", "decode", "frames/s/worker (median)", "rounds",
        "vs worker from cache", "device decode+augment frames/s",
    ]  # fmt: skip
    m = records[0]["machine"] if records else {}
    where = m.get("gpu") or f"{m.get('cpu_model')}, {m.get('cpus_available')} cores"
    head = (
        f"pretraining loader, {records[0]['workers'] if records else '?'} worker(s), batches of "
        f"{records[0]['batch_size'] if records else '?'} — {where}, load {m.get('load_avg_start')}→{m.get('load_avg_end')}"
    )
    return "\n".join([head, tabulate(rows, headers=headers, disable_numparse=True), f"→ {results['out']}"])


#: The table's columns: (header, key of a pair, format; ``/1024`` in the header: shown in GB).
COLUMNS = (
    ("loader cache img/s/worker", "loader_cache_per_worker", ".1f"),
    ("loader JPEG img/s/worker", "loader_jpeg_per_worker", ".1f"),
    ("cache speed-up", "loader_speedup", ".2f"),
    ("train img/s", "train_images_per_s", ".2f"),
    ("train img/s preloaded", "train_images_per_s_preloaded", ".2f"),
    ("data wait", "data_wait_fraction", ".1%"),
    ("GFLOP/img", "train_flops_per_image", ".1f"),
    ("MFU", "mfu", ".1%"),
    ("workers/device", "workers_per_device", ".1f"),
    ("peak RSS GB", "peak_rss_mb", ".1f"),
    ("peak CUDA GB", "peak_cuda_mb", ".1f"),
)
_SCALE = {"train_flops_per_image": 1e-9, "peak_rss_mb": 1 / 1024, "peak_cuda_mb": 1 / 1024}


def format_table(results: dict) -> str:
    """The pairs as a table (tabulate), with the settings and the machine above it."""
    from tabulate import tabulate

    rows = []
    for c in results["pairs"]:
        if c["status"] != "ok":
            rows.append([c["ssl"], c["backbone"], c["status"].upper(), (c["error"] or "")[:60]])
            continue
        cells = []
        for _, key, spec in COLUMNS:
            value = c[key]
            cells.append(fmt(value * _SCALE[key] if value is not None and key in _SCALE else value, spec))
        rows.append([c["ssl"], c["backbone"], c["views"], *cells])
    s, m = results["settings"], results["machine"]
    where = m["gpu"] or f"{m['cpu_model']}, {m['cpus_available']} cores"
    head = (
        f"pretraining{' (tiny)' if s['tiny'] else ''}: {s['input_size']}² views, batch {s['batch_size']}, "
        f"{s['steps']} steps, {s['workers']} workers (loader rates: {s['loader_workers']}), {s['device']} "
        f"{s['precision']}{', compiled' if s['compile'] else ''}; {s['frames']} frames, decoded cache built in "
        f"{fmt(results['cache_build_s'], '.1f')} s — {where}, load {m['load_avg_start']}→{m.get('load_avg_end')}"
    )
    headers = ["ssl", "backbone", "views", *(h for h, _, _ in COLUMNS)]
    note = "img = frame (a two-view method pushes 2 views of each through the model)"
    return "\n".join(
        [head, tabulate(rows, headers=headers, disable_numparse=True), note, f"→ {results['out']}"]
    )


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status: 0, or 1 when a pair failed other than by OOM (a user
    error exits with status 2)."""
    args = parse_args(argv)
    if args.loader:
        common.run_command(args, run_loader, format_loader_table)
        return 0
    results = common.run_command(args, run, format_table)
    return 1 if any(c["status"] == "error" for c in results["pairs"]) else 0


if __name__ == "__main__":
    raise SystemExit(main())
