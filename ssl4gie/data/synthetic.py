"""Synthetic endoscopy-like datasets in the exact on-disk layouts of the real ones (as the datasets are
released and the study's scripts read them).

Tests and demos need data that goes through the real readers without downloading anything. Each writer
draws only from ``numpy.random.default_rng`` seeded by ``seed`` (same seed -> byte-identical files), refuses
to write into a non-empty folder, and writes into a staging folder ``<root>.tmp-<pid>`` that is renamed to
``root`` only when the dataset is complete, so an interrupted run never leaves a dataset that looks whole.

Sizes are ``(width, height)`` as in PIL. Command line::

    python -m ssl4gie.data.synthetic {kvasir_seg,cvc_clinicdb,pranet,hyperkvasir,hyperkvasir_unlabelled,c3vd} \\
        OUT [--n N] [--seed S]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import string
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

log = logging.getLogger(__name__)

#: HyperKvasir labelled classes written by :func:`write_hyperkvasir`: class folder -> (tract, category).
#: The first 18 are the study's classes (``Classification/train_classification.py``); the last two live in
#: categories the study ignores.
HYPERKVASIR_CLASSES: dict[str, tuple[str, str]] = {
    **{c: ("lower-gi-tract", "anatomical-landmarks") for c in ("cecum", "ileum", "retroflex-rectum")},
    **{c: ("upper-gi-tract", "anatomical-landmarks") for c in ("pylorus", "retroflex-stomach", "z-line")},
    **{
        c: ("lower-gi-tract", "pathological-findings")
        for c in (
            "hemorrhoids",
            "polyps",
            *(f"ulcerative-colitis-grade-{g}" for g in ("0-1", "1-2", "1", "2-3", "2", "3")),
        )
    },
    **{
        c: ("upper-gi-tract", "pathological-findings")
        for c in ("barretts-short-segment", "barretts", "esophagitis-a", "esophagitis-b-d")
    },
    "bbps-0-1": ("lower-gi-tract", "quality-of-mucosal-views"),
    "dyed-lifted-polyps": ("lower-gi-tract", "therapeutic-interventions"),
}

#: The 22 C3VD videos as "<sequence folder>/<video code>" (as the study's ``train_depth.py`` names them):
#: 2 test, 2 val, then 18 train.
C3VD_VIDEOS: tuple[str, ...] = tuple(
    f"{seq}_under_review/{code}"
    for seq, code in [
        ("trans_t2_b", "t2v2"), ("cecum_t4_b", "c4v3"), ("trans_t4_a", "t4v1"), ("cecum_t2_c", "c2v3"),
        ("cecum_t1_a", "c1v1"), ("cecum_t1_b", "c1v3"), ("cecum_t2_a", "c2v1"), ("cecum_t2_b", "c2v2"),
        ("cecum_t3_a", "c3v2"), ("cecum_t4_a", "c4v2"), ("desc_t4_a", "d4v2"), ("sigmoid_t1_a", "s1v3"),
        ("sigmoid_t2_a", "s2v1"), ("sigmoid_t3_a", "s3v1"), ("sigmoid_t3_b", "s3v2"), ("trans_t1_a", "t1v1"),
        ("trans_t1_b", "t1v3"), ("trans_t2_a", "t2v1"), ("trans_t2_c", "t2v3"), ("trans_t3_a", "t3v2"),
        ("trans_t3_b", "t3v3"), ("trans_t4_b", "t4v3"),
    ]
)  # fmt: skip

_ALPHANUM = np.array(list(string.ascii_lowercase + string.digits))
_JPEG_QUALITY = 90


@contextlib.contextmanager
def _staging(root: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty staging folder that becomes ``root`` when the block finishes without error."""
    root = Path(os.path.abspath(root))  # normalised, so that "." or "out/" still have a name to stage beside
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise FileExistsError(f"{root} already exists and is not empty; pass a new folder or delete this one")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.with_name(f"{root.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)  # a leftover of a killed run that had the same pid
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if root.exists():
        root.rmdir()  # empty (checked above); rename cannot replace a directory portably
    tmp.rename(root)


def _child(rng: np.random.Generator) -> np.random.Generator:
    """An independent generator per image, so one image's draws never shift the next image's."""
    return np.random.default_rng(int(rng.integers(2**63)))


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    return np.arange(h, dtype=np.float32)[:, None], np.arange(w, dtype=np.float32)[None, :]


def _noise(rng: np.random.Generator, h: int, w: int, cells: float) -> np.ndarray:
    """Smooth random field (h, w) of about unit variance with ~`cells` bumps across the shorter side."""
    gh, gw = (max(2, round(cells * s / min(h, w))) for s in (h, w))
    small = Image.fromarray(rng.standard_normal((gh + 2, gw + 2)).astype(np.float32))
    # the box skips the outer ring of control points, whose bicubic interpolation is one-sided
    return np.asarray(small.resize((w, h), Image.Resampling.BICUBIC, box=(1, 1, gw + 1, gh + 1)))


def _to_uint8(rgb: np.ndarray) -> np.ndarray:
    return (np.clip(rgb, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


def _vessels(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Vessel-like curves in [0, 1] (h, w): smoothed random walks, thickness scaled with the image."""
    canvas = Image.new("L", (w, h))
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(3, 8))):
        steps = int(rng.integers(6, 16))
        angle = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0, 0.4, steps))
        step = min(h, w) * rng.uniform(0.03, 0.08)
        x = rng.uniform(0, w) + np.cumsum(step * np.cos(angle))
        y = rng.uniform(0, h) + np.cumsum(step * np.sin(angle))
        width = max(1, round(min(h, w) / 250 * rng.uniform(1, 3)))
        draw.line(
            list(zip(x.tolist(), y.tolist(), strict=True)),
            fill=int(rng.integers(110, 256)),
            width=width,
            joint="curve",
        )
    canvas = canvas.filter(ImageFilter.GaussianBlur(max(0.6, min(h, w) / 400)))
    return np.asarray(canvas, dtype=np.float32) / 255


def _mucosa(
    rng: np.random.Generator, h: int, w: int, tint: tuple[float, float, float] = (0, 0, 0)
) -> np.ndarray:
    """Reddish-pink mucosa (h, w, 3) in [0, 1]: uneven lighting, a dark lumen, fine texture and vessels."""
    base = (np.array([0.80, 0.42, 0.36]) + rng.uniform(-0.05, 0.05, 3) + np.asarray(tint)).astype(np.float32)
    shade = 0.85 + 0.13 * _noise(rng, h, w, 2.5)
    ys, xs = _grid(h, w)
    # the lumen is far from the light, hence a large dark region somewhere in the view
    ly, lx, s = rng.uniform(0.15, 0.85) * h, rng.uniform(0.15, 0.85) * w, rng.uniform(0.1, 0.25) * min(h, w)
    shade = shade * (1 - rng.uniform(0.6, 0.95) * np.exp(-((np.hypot(ys - ly, xs - lx) / s) ** 1.5)))
    texture = 0.03 * _noise(rng, h, w, max(4, min(h, w) / 12))
    rgb = base * (shade + texture)[..., None]
    rgb[..., 1:] += 0.035 * _noise(rng, h, w, 4)[..., None]  # paler, yellowish patches
    return rgb * (1 - 0.4 * _vessels(rng, h, w)[..., None] * np.array([0.35, 0.8, 0.6], dtype=np.float32))


def _vignette(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Field of view of the scope (h, w): bright centre falling off to a black rounded border."""
    ys, xs = _grid(h, w)
    d = np.hypot((xs + 0.5 - w / 2) / (w / 2), (ys + 0.5 - h / 2) / (h / 2))
    edge = rng.uniform(1.12, 1.3)
    return np.clip((edge - d) / 0.06, 0, 1) * (1 - 0.4 * (d / edge) ** 2)


def _glints(rng: np.random.Generator, h: int, w: int, spots: list[tuple[float, float]]) -> np.ndarray:
    """Specular highlights in [0, 1] (h, w): the light source reflected by wet tissue at `spots` (x, y)."""
    canvas = Image.new("L", (w, h))
    draw = ImageDraw.Draw(canvas)
    r0 = max(0.8, min(h, w) / 160)
    for x, y in spots:
        rx, ry = r0 * rng.uniform(0.5, 3.0, 2)
        draw.ellipse([x - rx, y - ry, x + rx, y + ry], fill=int(rng.integers(200, 256)))
    return np.asarray(canvas.filter(ImageFilter.GaussianBlur(r0 * 0.6)), dtype=np.float32) / 255


def _blob(rng: np.random.Generator, h: int, w: int, cx: float, cy: float, radius: float) -> np.ndarray:
    """Polyp outline as a field t (h, w, 3): t[..., 0] < 1 inside; t[..., 1:] = rotated coordinates in [-1, 1]."""
    ys, xs = _grid(h, w)
    rot = rng.uniform(0, np.pi)
    a, b = radius, radius * rng.uniform(0.6, 1.0)
    u = ((xs - cx) * np.cos(rot) + (ys - cy) * np.sin(rot)) / a
    v = (-(xs - cx) * np.sin(rot) + (ys - cy) * np.cos(rot)) / b
    theta = np.arctan2(v, u)
    # a few low harmonics make the ellipse lumpy; their amplitudes sum to < 0.3, so the shape stays star-shaped
    wobble = sum(
        rng.uniform(0, 0.12 / k) * np.cos(k * theta + rng.uniform(0, 2 * np.pi)) for k in range(2, 6)
    )
    return np.stack(np.broadcast_arrays(np.hypot(u, v) / (1 + wobble), u, v), axis=-1)


def _add_polyp(rng: np.random.Generator, rgb: np.ndarray, blob: np.ndarray) -> np.ndarray:
    """Paint a polyp: paler and pinker than the mucosa, domed and lit from one side, with a shadowed base."""
    h, w = rgb.shape[:2]
    t, u, v = blob[..., 0], blob[..., 1], blob[..., 2]
    light = rng.uniform(0, 2 * np.pi)
    dome = np.sqrt(np.clip(1 - t**2, 0, 1))
    shade = 0.8 + 0.3 * dome + 0.18 * np.clip(u * np.cos(light) + v * np.sin(light), -1, 1)
    # coarse mottling plus a finer, stronger grain than the mucosa's (the pit pattern)
    texture = 1 + 0.05 * _noise(rng, h, w, 5) + 0.05 * _noise(rng, h, w, max(6, min(h, w) / 12))
    colour = (np.array([1.04, 1.15, 1.12]) * rng.uniform(0.93, 1.05, 3)).astype(np.float32)
    polyp = rgb * colour * (shade * texture)[..., None]
    alpha = np.clip((1 - t) / 0.08 + 0.5, 0, 1)[..., None]
    # the bump casts a soft shadow around its base, deepest on the side away from the light
    away = 0.6 - 0.4 * np.clip(u * np.cos(light) + v * np.sin(light), -1, 1)
    rim = 1 - 0.35 * away * np.exp(-(((t - 1.08) / 0.12) ** 2))
    return rgb * rim[..., None] * (1 - alpha) + polyp * alpha


def _polyp_scene(
    rng: np.random.Generator, h: int, w: int, n_polyps: int
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Mucosa with 1..n_polyps non-touching polyps, without vignette: (rgb float (h, w, 3), one mask per polyp)."""
    rgb, masks, placed = _mucosa(rng, h, w), [], []
    for _ in range(n_polyps):
        for _attempt in range(20):
            r = rng.uniform(0.1, 0.26) * min(h, w)
            cx, cy = rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h
            # 1.3 bounds the lumpy outline's reach, so separate polyps stay separate mask components
            if all(np.hypot(cx - x, cy - y) > 1.3 * (r + pr) + 3 for x, y, pr in placed):
                break
        else:
            continue
        # paint only the window the polyp and its shadow can reach (2.2 r: the shadow is < 1e-10 beyond it)
        x0, x1, y0, y1 = (
            int(np.clip(c + sign * 2.2 * r, 0, side)) for c, side in ((cx, w), (cy, h)) for sign in (-1, 1)
        )
        blob = _blob(rng, y1 - y0, x1 - x0, cx - x0, cy - y0, r)
        rgb[y0:y1, x0:x1] = _add_polyp(rng, rgb[y0:y1, x0:x1], blob)
        masks.append(np.zeros((h, w), dtype=bool))
        masks[-1][y0:y1, x0:x1] = blob[..., 0] < 1
        placed.append((cx, cy, r))
    spots = [(x + rng.normal(0, 0.3 * r), y + rng.normal(0, 0.3 * r)) for x, y, r in placed]
    spots += [(rng.uniform(0, w), rng.uniform(0, h)) for _ in range(int(rng.integers(3, 10)))]
    glint = _glints(rng, h, w, spots)[..., None]
    return rgb + (1.1 - rgb) * glint, masks


def _finish(rng: np.random.Generator, rgb: np.ndarray) -> np.ndarray:
    """Apply the scope's vignette and sensor noise; return uint8 RGB."""
    h, w = rgb.shape[:2]
    rgb = rgb * _vignette(rng, h, w)[..., None]
    return _to_uint8(rgb + 0.006 * rng.standard_normal(rgb.shape, dtype=np.float32))


def write_kvasir_seg(
    root: str | os.PathLike, n: int = 200, seed: int = 0, size_range: tuple[int, int] = (320, 640)
) -> Path:
    """Write a Kvasir-SEG-like dataset: ``images/<id>.jpg``, ``masks/<id>.jpg``, ``kavsir_bboxes.json``.

    Ids are random 25-character lowercase alphanumerics like the real ones; width and height are drawn
    independently from ``size_range`` (inclusive). Masks are RGB JPEGs (edges not exactly 0/255; binarise at
    127). Every image has 1 or 2 non-touching polyps; each gets one box, the tight box of its mask in pixel-edge
    coordinates (``xmin`` = first foreground column, ``xmax`` = last foreground column + 1, same for y), so
    ``0 <= xmin < xmax <= width``. Raises FileExistsError if ``root`` is non-empty.
    """
    lo, hi = size_range
    if n < 1 or not 32 <= lo <= hi:
        raise ValueError(
            f"write_kvasir_seg: need n >= 1 and 32 <= size_range[0] <= size_range[1], got {n=}, {size_range=}"
        )
    rng = np.random.default_rng(seed)
    with _staging(root) as tmp:
        (tmp / "images").mkdir()
        (tmp / "masks").mkdir()
        boxes: dict[str, dict] = {}
        while len(boxes) < n:
            image_id = "".join(rng.choice(_ALPHANUM, 25))
            if image_id in boxes:  # 36**25 ids: practically never, but ids must be unique
                continue
            w, h = (int(s) for s in rng.integers(lo, hi + 1, 2))
            img_rng = _child(rng)
            rgb, masks = _polyp_scene(img_rng, h, w, n_polyps=1 + int(img_rng.random() < 0.25))
            Image.fromarray(_finish(img_rng, rgb)).save(
                tmp / "images" / f"{image_id}.jpg", quality=_JPEG_QUALITY
            )
            union = np.any(masks, axis=0).astype(np.uint8) * 255
            mask_rgb = np.repeat(union[..., None], 3, axis=2)
            Image.fromarray(mask_rgb).save(tmp / "masks" / f"{image_id}.jpg", quality=_JPEG_QUALITY)
            bbox = []
            for m in masks:
                ys, xs = np.nonzero(m)
                edges = {"xmin": xs.min(), "ymin": ys.min(), "xmax": xs.max() + 1, "ymax": ys.max() + 1}
                bbox.append({"label": "polyp", **{k: int(v) for k, v in edges.items()}})
            boxes[image_id] = {"height": h, "width": w, "bbox": bbox}
        (tmp / "kavsir_bboxes.json").write_text(json.dumps(boxes, indent=1))
    return Path(root)


def write_cvc_clinicdb(
    root: str | os.PathLike, n: int = 60, seed: int = 0, ext: str = "tif", size: tuple[int, int] = (384, 288)
) -> Path:
    """Write a CVC-ClinicDB-like dataset: ``Original/<i>.<ext>`` (RGB) and ``Ground Truth/<i>.<ext>`` (mode L,
    exactly 0/255), i = 1..n, every frame of ``size`` with >= 1 polyp. Like the real data, frames come in
    sequences of 4-12 near-duplicates (the camera pans and zooms over one scene), so a random frame-level split
    leaks. ``ext`` is "tif" (classic release) or "png". Raises FileExistsError if ``root`` is non-empty.
    """
    if ext not in ("tif", "png"):
        raise ValueError(f"write_cvc_clinicdb: ext must be 'tif' or 'png', got {ext!r}")
    w, h = size
    if n < 1 or min(w, h) < 32:
        raise ValueError(f"write_cvc_clinicdb: need n >= 1 and both sides of size >= 32, got {n=}, {size=}")
    rng = np.random.default_rng(seed)
    with _staging(root) as tmp:
        (tmp / "Original").mkdir()
        (tmp / "Ground Truth").mkdir()
        i = 1
        while i <= n:
            seq_rng = _child(rng)
            length = min(n - i + 1, int(seq_rng.integers(4, 13)))
            sw, sh = round(w * 1.3), round(h * 1.3)
            rgb, masks = _polyp_scene(seq_rng, sh, sw, n_polyps=1 + int(seq_rng.random() < 0.15))
            scene = Image.fromarray(_to_uint8(rgb / 1.1))  # /1.1: keep the glints' headroom out of clipping
            mask = Image.fromarray(np.any(masks, axis=0).astype(np.uint8) * 255)
            start, end = seq_rng.uniform(-0.08, 0.08, (2, 2))
            zoom0, zoom1 = seq_rng.uniform(0.8, 1.0, 2)
            for k in range(length):
                f = k / max(1, length - 1)
                zoom = zoom0 + f * (zoom1 - zoom0)
                cx, cy = (0.5 + start + f * (end - start)) * (sw, sh)
                box = (cx - zoom * w / 2, cy - zoom * h / 2, cx + zoom * w / 2, cy + zoom * h / 2)
                frame = np.asarray(scene.resize((w, h), Image.Resampling.BICUBIC, box=box), dtype=np.float32)
                gain = 1.1 * seq_rng.uniform(0.92, 1.06)  # auto-exposure flicker between frames
                Image.fromarray(_finish(seq_rng, frame / 255 * gain)).save(tmp / "Original" / f"{i}.{ext}")
                mask.resize((w, h), Image.Resampling.NEAREST, box=box).save(
                    tmp / "Ground Truth" / f"{i}.{ext}"
                )
                i += 1
    return Path(root)


def write_pranet_set(
    root: str | os.PathLike,
    n: int = 20,
    seed: int = 0,
    size_range: tuple[int, int] = (320, 640),
    rgb_masks: bool = False,
) -> Path:
    """Write a polyp set in the layout the PraNet test sets (and ``TrainDataset``) circulate in:
    ``images/<i>.png`` (RGB) and ``masks/<i>.png`` (exactly 0/255; mode L, or RGB with ``rgb_masks`` as some of
    those sets have), i = 1..n, the same file name in both folders. Width and height are drawn independently
    from ``size_range`` (inclusive); every image has 1 or 2 polyps. Raises FileExistsError if ``root`` is
    non-empty, ValueError for n < 1 or a side under 32.
    """
    lo, hi = size_range
    if n < 1 or not 32 <= lo <= hi:
        raise ValueError(
            f"write_pranet_set: need n >= 1 and 32 <= size_range[0] <= size_range[1], got {n=}, {size_range=}"
        )
    rng = np.random.default_rng(seed)
    with _staging(root) as tmp:
        (tmp / "images").mkdir()
        (tmp / "masks").mkdir()
        for i in range(1, n + 1):
            w, h = (int(s) for s in rng.integers(lo, hi + 1, 2))
            img_rng = _child(rng)
            rgb, masks = _polyp_scene(img_rng, h, w, n_polyps=1 + int(img_rng.random() < 0.2))
            Image.fromarray(_finish(img_rng, rgb)).save(tmp / "images" / f"{i}.png")
            union = np.any(masks, axis=0).astype(np.uint8) * 255
            mask = np.repeat(union[..., None], 3, axis=2) if rgb_masks else union
            Image.fromarray(mask).save(tmp / "masks" / f"{i}.png")
    return Path(root)


def _class_image(rng: np.random.Generator, h: int, w: int, idx: int) -> np.ndarray:
    """Endoscopy-like image whose colour tint (idx // 5) and pattern (idx % 5) identify class `idx`."""
    tint = [(0, 0, 0), (0.1, -0.08, -0.08), (-0.12, 0.06, 0.0), (-0.02, -0.1, 0.12)][idx // 5 % 4]
    rgb = _mucosa(rng, h, w, tint)
    ys, xs = _grid(h, w)
    cx, cy = rng.uniform(0.35, 0.65) * w, rng.uniform(0.35, 0.65) * h
    r = rng.uniform(0.18, 0.3) * min(h, w)
    pattern = idx % 5
    if pattern == 1:  # a polyp-like bump
        rgb = _add_polyp(rng, rgb, _blob(rng, h, w, cx, cy, r))
    elif pattern == 2:  # a wavy boundary with pale tissue above it, like the z-line
        edge = cy + 0.1 * h * np.sin(xs / w * rng.uniform(4, 9) + rng.uniform(0, 6))
        pale = np.clip((edge - ys) / 2.0, 0, 1)[..., None]
        rgb = rgb * (1 - pale) + (rgb * 0.5 + np.array([0.45, 0.4, 0.38])) * pale
    elif pattern == 3:  # a dark ring, like a sphincter seen head-on
        d = np.hypot(xs - cx, ys - cy)
        rgb = rgb * (1 - 0.6 * np.exp(-(((d - r) / (0.25 * r)) ** 2)))[..., None]
    elif pattern == 4:  # whitish spots, like fibrin-covered ulcers
        spots = [(rng.uniform(0, w), rng.uniform(0, h)) for _ in range(int(rng.integers(6, 12)))]
        canvas = Image.new("L", (w, h))
        draw = ImageDraw.Draw(canvas)
        for x, y in spots:
            s = rng.uniform(0.02, 0.06) * min(h, w)
            draw.ellipse([x - s, y - s, x + s, y + s], fill=220)
        spot = np.asarray(canvas.filter(ImageFilter.GaussianBlur(1)), dtype=np.float32)[..., None] / 255
        rgb = rgb * (1 - spot) + np.array([0.92, 0.88, 0.8]) * spot
    return _finish(rng, rgb)


def write_hyperkvasir(
    root: str | os.PathLike,
    classes: dict[str, int] | None = None,
    seed: int = 0,
    size: tuple[int, int] = (96, 80),
) -> Path:
    """Write HyperKvasir's labelled tree ``labeled-images/<tract>/<category>/<class>/<uuid>.jpg``.

    ``classes`` maps class folder names (keys of :data:`HYPERKVASIR_CLASSES`) to image counts; only those
    classes are written. Default: 4 images for each of the 18 study classes and for the two ignored-category
    classes ``bbps-0-1`` and ``dyed-lifted-polyps``. Each class has its own colour tint and pattern, so a
    classifier can learn them. A class's images depend only on ``seed`` and the class, not on which other
    classes are requested. Raises ValueError for unknown class names, FileExistsError if ``root`` is non-empty.
    """
    counts = dict.fromkeys(HYPERKVASIR_CLASSES, 4) if classes is None else dict(classes)
    unknown = sorted(set(counts) - set(HYPERKVASIR_CLASSES))
    if unknown:
        raise ValueError(
            f"write_hyperkvasir: unknown classes {unknown}; valid: {sorted(HYPERKVASIR_CLASSES)}"
        )
    w, h = size
    per_class = np.random.SeedSequence(seed).spawn(len(HYPERKVASIR_CLASSES))
    with _staging(root) as tmp:
        for idx, (name, (tract, category)) in enumerate(HYPERKVASIR_CLASSES.items()):
            if name not in counts:
                continue
            folder = tmp / "labeled-images" / tract / category / name
            folder.mkdir(parents=True)
            rng = np.random.default_rng(per_class[idx])
            for _ in range(counts[name]):
                img_rng = _child(rng)
                file = f"{uuid.UUID(bytes=img_rng.bytes(16), version=4)}.jpg"
                Image.fromarray(_class_image(img_rng, h, w, idx)).save(folder / file, quality=_JPEG_QUALITY)
    return Path(root)


def _c3vd_frame(
    rng: np.random.Generator, h: int, w: int, video: dict, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Frame k of a colon-phantom fly-through: (RGB uint8 (h, w, 3), depth in mm float (h, w), 0 = invalid)."""
    ys, xs = _grid(h, w)
    cx, cy = (video["centre"] + k * video["drift"]) * (w, h)
    f = 0.5 * w  # focal length in pixels: about 90 degrees horizontal field of view
    rx, ry = (xs - cx) / f, (ys - cy) / f
    theta = np.arctan2(ry, rx)
    radius = video["radius"] * (1 + 0.15 * np.cos(theta - video["squash"]))
    # looking down a tube: the wall seen at image radius rho is at axial depth radius / rho
    depth = radius / np.maximum(np.hypot(rx, ry), 1e-3)
    along = depth + k * video["speed"]  # wall coordinate along the tube; the camera moves forward
    fold = np.sin(2 * np.pi * along / video["fold"] + video["phase"] + 0.4 * np.sin(3 * theta))
    depth = np.clip(depth * (1 + 0.05 * fold), 5.0, 90.0)
    # texture fixed on the wall (theta, along) so it moves consistently with the camera
    pattern = sum(
        np.sin(m * theta + along * q + p) for m, q, p in zip(video["m"], video["q"], video["p"], strict=True)
    )
    vessels = np.exp(-((pattern / 0.12) ** 2))  # the zero set of a random wave sum: a curvy network
    albedo = (
        video["albedo"] * (1 + 0.05 * pattern[..., None]) * (1 - 0.3 * vessels[..., None] * (0.3, 0.9, 0.7))
    )
    # the light sits at the camera: irradiance falls with distance, fold faces towards it are brighter
    light = (0.7 * video["radius"] / depth) ** 1.3 * (1 + 0.2 * np.cos(2 * np.pi * along / video["fold"]))
    rgb = albedo * np.clip(light, 0, 1.1)[..., None]
    rgb = rgb + (1 - rgb) * np.clip((light - 1.0) * 1.5, 0, 0.6)[..., None]  # glare on the nearest wall
    rgb = _to_uint8(rgb + rng.normal(0, 0.01, rgb.shape))
    invalid = rng.random((h, w)) < 0.003  # sparse holes, as rendered depth has where the model had gaps
    return rgb, np.where(invalid, 0.0, depth)


def write_c3vd(
    root: str | os.PathLike,
    videos: dict[str, int] | None = None,
    seed: int = 0,
    size: tuple[int, int] = (135, 108),
) -> Path:
    """Write a C3VD-like dataset: ``<sequence>/<video>/NNNN_color.png`` (RGB 8-bit) and ``NNNN_depth.tiff``
    (16-bit, PIL mode ``I;16``, 0..65535 = 0..100 mm, depth 5..90 mm with a few 0 = invalid pixels), plus
    ``NNNN_occlusion.png`` per frame and ``pose.txt`` per video that readers must ignore.

    ``videos`` maps "<sequence folder>/<video code>" to a frame count; default: the 22 :data:`C3VD_VIDEOS`
    with 3 frames each. Frames are numbered from 0000. Raises ValueError for a key that is not two folder
    names, FileExistsError if ``root`` is non-empty.
    """
    counts = dict.fromkeys(C3VD_VIDEOS, 3) if videos is None else dict(videos)
    bad = [key for key in counts if len(Path(key).parts) != 2 or Path(key).is_absolute()]
    if bad:
        raise ValueError(f"write_c3vd: video keys must look like 'trans_t2_b_under_review/t2v2', got {bad}")
    w, h = size
    per_video = np.random.SeedSequence(seed).spawn(len(counts))
    with _staging(root) as tmp:
        for (key, frames), ss in zip(counts.items(), per_video, strict=True):
            rng = np.random.default_rng(ss)
            folder = tmp / key
            folder.mkdir(parents=True)
            video = {
                "centre": rng.uniform(0.35, 0.65, 2), "drift": rng.normal(0, 0.02, 2),
                "radius": rng.uniform(9, 14), "squash": rng.uniform(0, np.pi), "speed": rng.uniform(1, 4),
                "fold": rng.uniform(6, 12), "phase": rng.uniform(0, 2 * np.pi),
                "m": rng.integers(-4, 5, 6), "q": rng.uniform(-0.8, 0.8, 6), "p": rng.uniform(0, 2 * np.pi, 6),
                "albedo": np.array([0.85, 0.5, 0.45]) + rng.uniform(-0.05, 0.05, 3),
            }  # fmt: skip
            poses = []
            for k in range(frames):
                rgb, depth = _c3vd_frame(rng, h, w, video, k)
                Image.fromarray(rgb).save(folder / f"{k:04d}_color.png")
                depth16 = np.round(depth / 100.0 * 65535).astype(np.uint16)
                Image.fromarray(depth16).save(folder / f"{k:04d}_depth.tiff")  # uint16 -> mode I;16
                Image.fromarray(((depth16 == 0) * 255).astype(np.uint8)).save(
                    folder / f"{k:04d}_occlusion.png"
                )
                poses.append(f"1,0,0,0,0,1,0,0,0,0,1,0,0,0,{k * video['speed']:.3f},1")
            (folder / "pose.txt").write_text("\n".join(poses) + "\n")
    return Path(root)


def write_hyperkvasir_unlabelled(
    root: str | os.PathLike, count: int = 24, seed: int = 0, size_range: tuple[int, int] = (64, 256)
) -> Path:
    """Write HyperKvasir's unlabelled tree ``unlabeled-images/images/<uuid>.jpg`` (RGB JPEG, as the release).

    ``count`` frames; width and height are drawn independently from ``size_range`` (inclusive), so sizes and
    aspect ratios vary as in the release (and both portrait and landscape frames occur). About a third of the
    frames show a polyp, the rest plain mucosa; every frame has the scope's vignette and glints. Raises
    ValueError for count < 1 or a side under 32, FileExistsError if ``root`` is non-empty.
    """
    lo, hi = size_range
    if count < 1 or not 32 <= lo <= hi:
        raise ValueError(
            f"write_hyperkvasir_unlabelled: need count >= 1 and 32 <= size_range[0] <= size_range[1], got "
            f"{count=}, {size_range=}"
        )
    rng = np.random.default_rng(seed)
    with _staging(root) as tmp:
        folder = tmp / "unlabeled-images" / "images"
        folder.mkdir(parents=True)
        for _ in range(count):
            w, h = (int(s) for s in rng.integers(lo, hi + 1, 2))
            img_rng = _child(rng)
            if img_rng.random() < 0.35:
                rgb, _masks = _polyp_scene(img_rng, h, w, n_polyps=1)
            else:
                rgb = _mucosa(img_rng, h, w)
                spots = [
                    (img_rng.uniform(0, w), img_rng.uniform(0, h)) for _ in range(int(img_rng.integers(2, 8)))
                ]
                rgb = rgb + (1.1 - rgb) * _glints(img_rng, h, w, spots)[..., None]
            file = f"{uuid.UUID(bytes=img_rng.bytes(16), version=4)}.jpg"
            Image.fromarray(_finish(img_rng, rgb)).save(folder / file, quality=_JPEG_QUALITY)
    return Path(root)


_WRITERS: dict[str, tuple[Callable[..., Path], Callable[[int], dict]]] = {
    "kvasir_seg": (write_kvasir_seg, lambda n: {"n": n}),
    "cvc_clinicdb": (write_cvc_clinicdb, lambda n: {"n": n}),
    "pranet": (write_pranet_set, lambda n: {"n": n}),
    "hyperkvasir": (write_hyperkvasir, lambda n: {"classes": dict.fromkeys(HYPERKVASIR_CLASSES, n)}),
    "c3vd": (write_c3vd, lambda n: {"videos": dict.fromkeys(C3VD_VIDEOS, n)}),
    "hyperkvasir_unlabelled": (write_hyperkvasir_unlabelled, lambda n: {"count": n}),
}


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the process exit code (0 ok, 1 when the output folder is unusable)."""
    parser = argparse.ArgumentParser(
        prog="python -m ssl4gie.data.synthetic",
        description="Write a small synthetic dataset in the on-disk layout of a real one.",
    )
    parser.add_argument("dataset", choices=sorted(_WRITERS))
    parser.add_argument("out", type=Path, help="output folder; must not exist or be empty")
    parser.add_argument(
        "--n", type=int, default=None,
        help="kvasir_seg/cvc_clinicdb/pranet/hyperkvasir_unlabelled: images; hyperkvasir: images per class; "
        "c3vd: frames per video",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.n is not None and args.n < 1:
        parser.error(f"--n must be >= 1, got {args.n}")
    writer, n_kwargs = _WRITERS[args.dataset]
    try:
        root = writer(args.out, seed=args.seed, **({} if args.n is None else n_kwargs(args.n)))
    except (FileExistsError, ValueError) as err:
        log.error("%s", err)
        return 1
    log.info("wrote synthetic %s (seed %d) to %s", args.dataset, args.seed, root)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
