"""``python -m ssl4gie.bench.gpu``: the study's finetuning cases on one GPU — 4 tasks × ResNet-50 / ViT-B.

Per case (segmentation, classification, detection, depth × resnet50, vit_b) it composes the real config at the
study's settings (real-size models, 224² inputs; detection: ResNet short side 800 / long side ≤ 1333, ViT canvas
1024²; effective batch 48 as the task's micro-batch × accumulation steps), builds the model, the datasets and the
:class:`~ssl4gie.engine.trainer.Trainer` as a run does, and after warm-up optimiser steps measures over a few
more:

* training images/s and the share of step time spent waiting for the next batch;
* peak GPU memory (``torch.cuda.max_memory_allocated``, reset per case);
* FLOPs of one training micro-step (forward + backward, ``FlopCounterMode``) and model FLOP utilisation
  MFU = model FLOPs/s ÷ the GPU's dense bf16 peak (:data:`ssl4gie.bench.flops.BF16_PEAK_TFLOPS`,
  ``--peak-tflops``; n/a on a CPU);
* the loader's images/s per worker in GPU-augment mode (workers only read the decoded cache and collate; the
  batch is augmented on the GPU) with 1 and 2 workers, on any machine, and the CPU cores one GPU needs at the
  measured training rate: cores = training images/s ÷ the lower per-worker rate. Detection always augments in
  the workers (boxes), so its rate is that of its normal loader.

A case that runs out of GPU memory is reported as ``oom`` and the next one runs; any other failure is ``error``
(exit status 1 at the end). Data is synthetic, in the real layouts (:mod:`ssl4gie.data.synthetic`), written
once into ``--work-dir`` and reused. Results: a table on stdout and JSON (``--out``, rewritten after every case,
so that an interrupted suite still leaves its finished cases)::

    python -m ssl4gie.bench.gpu --out bench_gpu.json                       # the 8 cases, GPU settings
    python -m ssl4gie.bench.gpu --tasks detection --backbones vit_b --micro-batch 4
    python -m ssl4gie.bench.gpu --loader-only --device cpu                 # per-worker loader rates, any machine
    python -m ssl4gie.bench.gpu --tiny --device cpu                        # tiny models and inputs, minutes on CPU
    python -m ssl4gie.bench.gpu --loader --tasks detection --device cpu --json det.json   # loader records
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, open_dict

from ssl4gie.bench import common, flops
from ssl4gie.bench import data as bench_data
from ssl4gie.bench.common import (
    BatchFeed,
    build_trainer,
    compose,
    fmt,
    machine_info,
    rounded,
    sync,
)
from ssl4gie.run.checks import validate

log = logging.getLogger("ssl4gie.bench")

TASKS = ("segmentation", "classification", "detection", "depth")
BACKBONES = ("resnet50", "vit_b")
DATASETS = {
    "segmentation": "kvasir_seg",
    "classification": "hyperkvasir_anatomical",
    "detection": "kvasir_det",
    "depth": "c3vd",
}
#: The data each dataset config reads (kvasir_seg and kvasir_det share one folder, as in the study).
DATA_OF = {
    "kvasir_seg": "kvasir",
    "kvasir_det": "kvasir",
    "hyperkvasir_anatomical": "hyperkvasir",
    "c3vd": "c3vd",
}
# Tiny mode: shrunken backbones (backbone.tiny) plus small inputs and decoders, for a CPU run in a minute or two.
_SMALL_DPT = ["task.decoder.vit.head.reassemble_channels=[8,8,16,16]", "task.decoder.vit.head.features=16"]
TINY_OVERRIDES = {
    "segmentation": [
        "task.input_size=64",
        *_SMALL_DPT,
        "task.decoder.resnet.head.channels=16",
        "task.decoder.resnet.head.low_proj_channels=8",
    ],
    "classification": ["task.input_size=64"],
    "depth": ["task.input_size=64", *_SMALL_DPT, "task.decoder.resnet.head.head_channels=[8,8]"],
    "detection": [
        "task.min_size=128",
        "task.max_size=224",
        "task.canvas_size=256",
        "task.rois_per_image=32",
        "task.fpn_channels=32",  # the box head and RPN at full width would dominate the tiny models
    ],
}

#: Every key of a case in the JSON (None where not measured: CPU memory, MFU on CPU, a failed case).
CASE_KEYS = (
    "task", "backbone", "dataset", "status", "error", "input", "batch_size", "micro_batch", "accum_steps",
    "warmup_steps", "steps", "device", "precision", "channels_last", "gpu_augment", "compile", "workers",
    "params_m", "train_images_per_s", "step_time_s", "data_wait_fraction", "loss", "peak_memory_mb",
    "train_flops_per_image", "model_tflops_per_s", "mfu", "loader_images_per_s",
    "loader_per_worker_images_per_s", "cores_per_gpu", "elapsed_s",
)  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m ssl4gie.bench.gpu",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--tiny", action="store_true", help="tiny backbones, inputs and data (a CPU check)")
    p.add_argument("--tasks", default=",".join(TASKS), help="comma-separated subset of " + ",".join(TASKS))
    p.add_argument("--backbones", default=",".join(BACKBONES), help="comma-separated subset")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--precision", default="auto", help="trainer.precision: auto | fp32 | bf16 | fp16")
    p.add_argument("--batch-size", type=int, default=None, help="effective batch (default 48; tiny 8)")
    p.add_argument("--micro-batch", type=int, default=None, help="trainer.micro_batch (default: the task's)")
    p.add_argument("--steps", type=int, default=None, help="timed optimiser steps (default 3; tiny 1)")
    p.add_argument("--warmup", type=int, default=1, help="untimed optimiser steps first")
    p.add_argument("--workers", default="auto", help="training loader workers (trainer.num_workers)")
    p.add_argument("--loader-workers", default="1,2", help="worker counts of the per-worker loader rate")
    p.add_argument(
        "--loader-batches", type=int, default=None, help="timed loader batches (default 8; tiny 3)"
    )
    p.add_argument("--peak-tflops", type=float, default=None, help="the GPU's bf16 dense peak, TFLOP/s")
    p.add_argument("--compile", action="store_true", help="trainer.compile=true (torch.compile)")
    p.add_argument(
        "--loader-only", action="store_true", help="only the per-worker loader rates (no training)"
    )
    p.add_argument(
        "--loader",
        action="store_true",
        help="only the training loader of each case in both modes (augmentation in the workers or on the device): "
        "one record per task × backbone × mode (--json)",
    )
    p.add_argument("--json", default=None, help="--loader: the records' JSON file (a list of records)")
    p.add_argument(
        "--loader-rounds", type=int, default=3, help="--loader: the modes take turns this many times"
    )
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument(
        "--work-dir", default=None, help="synthetic data + decoded cache; default .cache/ssl4gie/bench"
    )
    p.add_argument("--out", default=None, help="JSON file; default outputs/bench/gpu-suite[-tiny].json")
    p.add_argument("--max-minutes", type=float, default=None, help="skip the cases left after this long")
    p.add_argument("--threads", type=int, default=None, help="torch threads of this process")
    args = p.parse_args(argv)
    args.tasks, args.backbones = _subset(p, args.tasks, TASKS), _subset(p, args.backbones, BACKBONES)
    args.batch_size = args.batch_size or (8 if args.tiny else 48)
    args.micro_batch = args.micro_batch or (4 if args.tiny else None)
    args.steps = args.steps or (1 if args.tiny else 3)
    args.loader_batches = args.loader_batches or (3 if args.tiny else 8)
    try:
        args.loader_workers = sorted({int(w) for w in args.loader_workers.split(",")})
    except ValueError:
        p.error("--loader-workers takes comma-separated worker counts, e.g. 1,2")
    if args.warmup < 0 or min(args.loader_workers) < 1 or min(args.batch_size, args.steps) < 1:
        p.error("--warmup must be >= 0; --loader-workers, --batch-size and --steps >= 1")
    return args


def _subset(p: argparse.ArgumentParser, value: str, valid: tuple[str, ...]) -> list[str]:
    chosen = [v.strip() for v in value.split(",") if v.strip()]
    if not chosen or any(v not in valid for v in chosen):
        p.error(f"{value!r}: choose from {', '.join(valid)}")
    return chosen


# ------------------------------------------------------------------------------------------------------ cases
def compose_case(task: str, backbone: str, args: argparse.Namespace, roots: dict[str, Path]) -> DictConfig:
    """The real config of one case: the study's settings, or tiny ones, plus ``--set`` overrides."""
    overrides = [
        f"task={task}",
        f"dataset={DATASETS[task]}",
        f"backbone={backbone}",
        "pretraining=random",  # weights do not change the speed; random needs no download
        f"trainer.batch_size={args.batch_size}",
        f"trainer.device={args.device}",
        f"trainer.precision={args.precision}",
        f"trainer.num_workers={args.workers}",
        "trainer.progress=false",
        *(["backbone.tiny=true", *TINY_OVERRIDES[task]] if args.tiny else []),
        *args.overrides,
    ]
    cfg = compose(overrides, f"{task}/{backbone}")
    with open_dict(cfg):
        cfg.dataset.root, cfg.dataset.synthetic = str(roots[DATA_OF[cfg.dataset.name]]), None
        if "study_size" in cfg.dataset:
            cfg.dataset.study_size = None  # synthetic counts: no warning about the published split
        if args.micro_batch:
            cfg.trainer.micro_batch = args.micro_batch
        if args.compile:
            cfg.trainer.compile = True
    validate(cfg)
    return cfg


def _empty_case(task: str, backbone: str) -> dict:
    return {**dict.fromkeys(CASE_KEYS), "task": task, "backbone": backbone, "dataset": DATASETS[task]}


def measure_case(cfg: DictConfig, args: argparse.Namespace, cache_dir: Path, scratch: Path, peak) -> dict:
    """One case's measurements (the keys of :data:`CASE_KEYS` it fills). Raises on failure (OOM included)."""
    task, reader, trainer = build_trainer(cfg, scratch, "bench-gpu")
    facts = {
        "input": task.input_label(),
        "batch_size": trainer.micro_batch * trainer.accum_steps,
        "micro_batch": trainer.micro_batch,
        "accum_steps": trainer.accum_steps,
        "warmup_steps": args.warmup,
        "steps": args.steps,
        "device": str(trainer.device),
        "precision": str(trainer.dtype).removeprefix("torch."),
        "channels_last": bool(trainer.channels_last),
        "gpu_augment": bool(trainer.augment_on_device),  # trainer.gpu_augment, resolved by the engine
        "compile": bool(cfg.trainer.get("compile", False)),
        "workers": trainer.num_workers,
        "params_m": sum(p.numel() for p in trainer.model.parameters()) / 1e6,
    }
    if not args.loader_only:
        task.augment_on_device = trainer.augment_on_device  # as ssl4gie.run.pipeline does
        train_set = task.build_datasets(reader, ["train"], str(cache_dir), False)["train"]
        facts.update(measure_training(trainer, train_set, args, peak))
    # The loader of a GPU run on any machine: the workers read (decoded cache, or detection's JPEG bytes) and collate;
    # augmentation (detection: also decoding) happens on the device.
    task.augment_on_device = True
    loader_set = task.build_datasets(reader, ["train"], str(cache_dir), False)["train"]
    rates = common.loader_rates(trainer, loader_set, args.loader_workers, args.loader_batches)
    per_worker = {str(w): r / w for w, r in rates.items()}
    rate = facts.get("train_images_per_s")
    facts.update(
        loader_images_per_s={str(w): r for w, r in rates.items()},
        loader_per_worker_images_per_s=per_worker,
        cores_per_gpu=rate / min(per_worker.values()) if rate else None,
    )
    return facts


def measure_training(trainer, train_set, args: argparse.Namespace, peak: float | None) -> dict:
    """Training images/s, data wait, FLOPs and MFU, peak memory: ``args.warmup`` untimed optimiser steps, one
    FLOP-counting micro-step, then ``args.steps`` timed optimiser steps from one long-lived loader iterator."""
    micro, accum = trainer.micro_batch, trainer.accum_steps
    need = ((args.warmup + args.steps) * accum + 2) * micro  # + the counted micro-step and a spare
    feed = BatchFeed(trainer.loader(common.repeated(train_set, need), train=True))
    if args.warmup:
        trainer.train_epoch(feed.take(args.warmup * accum), 1)
    per_image = flops.step_flops(trainer, next(iter(feed.take(1)))) / micro
    sync(trainer.device)
    start = time.perf_counter()
    stats = trainer.train_epoch(feed.take(args.steps * accum), 1)
    sync(trainer.device)
    elapsed = time.perf_counter() - start
    feed.iterator = None  # ends the workers
    rate = feed.images / elapsed
    cuda = trainer.device.type == "cuda"
    return {
        "train_images_per_s": rate,
        "step_time_s": elapsed / args.steps,
        "data_wait_fraction": min(max(feed.wait_s / elapsed, 0.0), 1.0),
        "loss": stats.get("train/loss"),
        "train_flops_per_image": per_image,
        "model_tflops_per_s": per_image * rate / 1e12,
        "mfu": flops.mfu(per_image, rate, peak),
        "peak_memory_mb": torch.cuda.max_memory_allocated(trainer.device) / 2**20 if cuda else None,
    }


def run_case(task: str, backbone: str, args, roots, work: Path, peak) -> dict:
    """:func:`measure_case` with the failure handling: an OOM or an error is recorded and the suite goes on."""
    record = _empty_case(task, backbone)
    start = time.perf_counter()
    cuda = torch.cuda.is_available() and args.device != "cpu"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    log.info("case %s / %s", task, backbone)
    try:
        with tempfile.TemporaryDirectory(prefix="case-", dir=work) as scratch:
            cfg = compose_case(task, backbone, args, roots)
            record.update(measure_case(cfg, args, work / "decoded", Path(scratch), peak), status="ok")
    except Exception as e:
        record["status"] = "oom" if common.is_oom(e) else "error"
        record["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        if record["status"] == "oom":
            log.warning("%s / %s ran out of GPU memory: %s", task, backbone, record["error"])
        else:
            log.exception("%s / %s failed", task, backbone)
    # Outside the except block the traceback, and with it the case's model and tensors, is gone: free them now.
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    record["elapsed_s"] = time.perf_counter() - start
    return record


def format_table(results: dict) -> str:
    """The cases as a table (tabulate), with the machine and the peak used for MFU above it."""
    from tabulate import tabulate

    rows = []
    for c in results["cases"]:
        if c["status"] != "ok":
            rows.append(
                [c["task"], c["backbone"], c["input"] or "", "", c["status"].upper(), (c["error"] or "")[:60]]
            )
            continue
        loader = c["loader_per_worker_images_per_s"]
        rows.append([
            c["task"], c["backbone"], c["input"], f"{c['micro_batch']}×{c['accum_steps']}",
            fmt(c["train_images_per_s"], ".1f"), fmt(c["data_wait_fraction"], ".1%"),
            fmt(c["peak_memory_mb"] and c["peak_memory_mb"] / 1024, ".1f"),
            fmt(c["train_flops_per_image"] and c["train_flops_per_image"] / 1e9, ".1f"),
            fmt(c["model_tflops_per_s"], ".2f"), fmt(c["mfu"], ".1%"),
            " / ".join(f"{loader[w]:.0f}" for w in sorted(loader, key=int)), fmt(c["cores_per_gpu"], ".1f"),
        ])  # fmt: skip
    headers = [
        "task", "backbone", "input", "micro×accum", "train img/s", "data wait", "peak GB", "GFLOP/img",
        "TFLOP/s", "MFU", f"loader img/s/worker ({'/'.join(map(str, results['settings']['loader_workers']))} w)",
        "cores/GPU",
    ]  # fmt: skip
    m = results["machine"]
    where = m["gpu"] or f"{m['cpu_model']}, {m['cpus_available']} cores"
    peak = (
        f"bf16 peak {results['peak_tflops']:.0f} TFLOP/s ({results['peak_source']})"
        if results["peak_tflops"]
        else "MFU n/a"
    )
    head = f"study suite{' (tiny)' if results['tiny'] else ''} on {where}, torch {m['torch']}; {peak}"
    return "\n".join([head, tabulate(rows, headers=headers, disable_numparse=True), f"→ {results['out']}"])


def run(args: argparse.Namespace) -> dict:
    """Every selected case; returns the results (also written to the JSON file after each case)."""
    from ssl4gie.engine.device import resolve_device
    from ssl4gie.utils.io import write_json

    start = time.perf_counter()
    device = resolve_device(args.device)
    work = Path(
        args.work_dir or Path(os.environ.get("SSL4GIE_CACHE_DIR", ".cache/ssl4gie")) / "bench"
    ).expanduser()
    out = Path(
        args.out
        or Path(os.environ.get("SSL4GIE_OUTPUT_DIR", "outputs"))
        / "bench"
        / f"gpu-suite{'-tiny' if args.tiny else ''}.json"
    )
    roots = bench_data.write_data(work, {DATA_OF[DATASETS[t]] for t in args.tasks}, args.tiny)
    peak, source = flops.peak_tflops(device, args.peak_tflops)
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "work_dir")}
    results = {"suite": "study", "tiny": args.tiny, "machine": machine_info(device), "peak_tflops": peak,
               "peak_source": source, "settings": settings, "cases": [], "out": str(out)}  # fmt: skip
    for task in args.tasks:
        for backbone in args.backbones:
            if args.max_minutes is not None and time.perf_counter() - start > 60 * args.max_minutes:
                record = {
                    **_empty_case(task, backbone),
                    "status": "skipped",
                    "error": "--max-minutes reached",
                }
            else:
                record = run_case(task, backbone, args, roots, work, peak)
            results["cases"].append(rounded(record))
            results["elapsed_s"] = round(time.perf_counter() - start, 1)
            # the machine is shared with whatever else runs: the load at each case's end goes with the numbers
            results["machine"]["load_avg_end"] = round(os.getloadavg()[0], 2)
            write_json(out, {k: v for k, v in results.items() if k != "out"})
    return results


# ---------------------------------------------------------------------------------------------------- --loader
#: Every key of a loader record (``--loader --json``), as :data:`ssl4gie.bench.pretrain.LOADER_KEYS` with ``task``
#: for ``method``. ``decode_size``: null = images at full size (detection), else the decode-once cache's size.
LOADER_KEYS = (
    "task", "backbone", "mode", "decode_size", "frames_per_s_per_worker", "rounds_frames_per_s_per_worker",
    "device_frames_per_s", "device", "workers", "batch_size", "machine",
)  # fmt: skip


def device_augment_rate(task, dataset, device: torch.device, batch_size: int, batches: int) -> float:
    """Images/s of ``task.augment_batch`` on ``device`` (detection: decode + augmentation) over ``batches``
    collated batches, after one untimed batch."""
    from ssl4gie.data.collate import collate
    from ssl4gie.engine.trainer import to_device

    count, seconds = 0, 0.0
    for b in range(batches + 1):
        batch = collate([dataset[(b * batch_size + j) % len(dataset)] for j in range(batch_size)])
        batch = to_device(batch, device)
        sync(device)
        start = time.perf_counter()
        with torch.autocast(device.type, enabled=False):
            task.augment_batch(batch)
        sync(device)
        if b:
            seconds += time.perf_counter() - start
            count += len(batch["meta"])
    return count / seconds


def loader_records(
    cfg: DictConfig, args: argparse.Namespace, cache_dir: Path, scratch: Path, machine
) -> list:
    """Both modes of one case's training loader: frames/s per worker (median of ``--loader-rounds`` turns) and, in
    device mode, the rate of the device step."""
    task, reader, trainer = build_trainer(cfg, scratch, "bench-gpu-loader")
    sets = {}
    for mode in ("worker", "device"):
        task.augment_on_device = mode == "device"
        sets[mode] = task.build_datasets(reader, ["train"], str(cache_dir), False)["train"]
    workers = args.loader_workers[0]
    rates = common.dataset_rates(sets, workers, trainer.micro_batch, args.loader_batches, args.loader_rounds)
    decode_size = None if task.input_size is None else int(task.input_size)  # None: decoded at native size
    records = []
    for mode, per_round in rates.items():
        task.augment_on_device = mode == "device"
        on_device = None
        if mode == "device":
            on_device = device_augment_rate(task, sets[mode], trainer.device, trainer.micro_batch, 2)
        records.append(
            {
                "task": task.name,
                "backbone": cfg.backbone.name,
                "mode": mode,
                "decode_size": decode_size,
                "frames_per_s_per_worker": common.median(per_round),
                "rounds_frames_per_s_per_worker": per_round,
                "device_frames_per_s": on_device,
                "device": str(trainer.device) if mode == "device" else None,
                "workers": workers,
                "batch_size": trainer.micro_batch,
                "machine": machine,
            }
        )
    return records


def run_loader(args: argparse.Namespace) -> dict:
    """``--loader``: the records of every selected case (also written to ``--json`` after each case)."""
    from ssl4gie.engine.device import resolve_device
    from ssl4gie.utils.io import write_json

    start = time.perf_counter()
    device = resolve_device(args.device)
    work = Path(
        args.work_dir or Path(os.environ.get("SSL4GIE_CACHE_DIR", ".cache/ssl4gie")) / "bench"
    ).expanduser()
    out = Path(
        args.json or Path(os.environ.get("SSL4GIE_OUTPUT_DIR", "outputs")) / "bench" / "gpu-loader.json"
    )
    roots = bench_data.write_data(work, {DATA_OF[DATASETS[t]] for t in args.tasks}, args.tiny)
    machine = machine_info(device)
    records: list[dict] = []
    for task in args.tasks:
        for backbone in args.backbones:
            log.info("loader: %s / %s, worker and device modes in turns", task, backbone)
            with tempfile.TemporaryDirectory(prefix="loader-", dir=work) as scratch:
                cfg = compose_case(task, backbone, args, roots)
                records += loader_records(cfg, args, work / "decoded", Path(scratch), machine)
            machine["load_avg_end"] = round(os.getloadavg()[0], 2)
            write_json(out, [rounded(r) for r in records])
    return {
        "records": [rounded(r) for r in records],
        "out": str(out),
        "elapsed_s": time.perf_counter() - start,
    }


def format_loader_table(results: dict) -> str:
    from tabulate import tabulate

    records = results["records"]
    worker = {
        (r["task"], r["backbone"]): r["frames_per_s_per_worker"] for r in records if r["mode"] == "worker"
    }
    rows = [
        [
            r["task"], r["backbone"], r["mode"], r["decode_size"] or "full", fmt(r["frames_per_s_per_worker"], ".1f"),
            " / ".join(f"{v:.1f}" for v in r["rounds_frames_per_s_per_worker"]),
            f"{r['frames_per_s_per_worker'] / worker[r['task'], r['backbone']]:.1f}×",
            fmt(r["device_frames_per_s"], ".1f"),
        ]
        for r in records
    ]  # fmt: skip
    headers = ["task", "backbone", "mode", "decode", "images/s/worker (median)", "rounds", "vs worker",
               "device step images/s"]  # fmt: skip
    m = records[0]["machine"] if records else {}
    where = m.get("gpu") or f"{m.get('cpu_model')}, {m.get('cpus_available')} cores"
    head = f"training loaders — {where}, load {m.get('load_avg_start')}→{m.get('load_avg_end')}"
    return "\n".join([head, tabulate(rows, headers=headers, disable_numparse=True), f"→ {results['out']}"])


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status: 0, or 1 when a case failed other than by OOM (a user
    error exits with status 2)."""
    args = parse_args(argv)
    if args.loader:
        common.run_command(args, run_loader, format_loader_table)
        return 0
    results = common.run_command(args, run, format_table)
    return 1 if any(c["status"] == "error" for c in results["cases"]) else 0


if __name__ == "__main__":
    raise SystemExit(main())
