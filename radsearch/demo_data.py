"""A small, labelled, radiology-like synthetic archive for the demo and the tests.

Each class has a global look set by its anatomy (body outline, organs, texture, probe geometry) and,
for pathology classes, a local finding (nodules, a fluid level, a cyst, a tumour, a lesion, a
pneumothorax, a fracture line); every image is jittered in position, scale, rotation, intensity and
noise. Anatomy is therefore easy to retrieve and pathology harder, as in real archives.

Files are real DICOM Part 10 (file meta, proper SOP classes, rescale/window, MONOCHROME1 CR,
multi-frame US, some RLE and JPEG 2000 lossless) carrying fake patient identities in every
identifying tag, recorded in `DemoArchive.phi_strings` so tests can prove they never leak. The
layout is ``dicom/<MODALITY>/<anatomy>/<pathology>/<name>.dcm`` (path template
``dicom/{modality}/{anatomy}/{pathology}/{file}``) plus ``png/<name>.png``; ``manifest.csv`` labels
every file. Output is deterministic for a seed.
"""

from __future__ import annotations

import csv
import functools
import io
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels.encoders.base import get_encoder
from pydicom.uid import (
    UID,
    ComputedRadiographyImageStorage,
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    MRImageStorage,
    RLELossless,
    UltrasoundImageStorage,
    UltrasoundMultiFrameImageStorage,
    generate_uid,
)

from core.payload import LABEL_FIELDS

__all__ = ["DATASET_NAME", "DemoArchive", "generate_demo_archive"]

DATASET_NAME = "radsearch-demo"
MANIFEST_HEADER = ("key", *LABEL_FIELDS)
TRAIN_FRACTION = 0.7

Array = NDArray[np.float64]


@dataclass
class DemoArchive:
    """What `generate_demo_archive` wrote."""

    root: Path
    n_files: int
    classes: list[tuple[str, str, str]]  # (modality, anatomy, pathology)
    manifest: Path
    phi_strings: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- geometry


class _Canvas:
    """Normalised coordinates (y in [-1, 1], x scaled by the aspect ratio) under a random
    similarity transform, so the same drawing code gives a jittered image each time."""

    def __init__(self, rows: int, cols: int, rng: np.random.Generator, jitter: float = 1.0) -> None:
        self.rows, self.cols, self.rng = rows, cols, rng
        aspect = cols / rows
        y, x = np.meshgrid(np.linspace(-1, 1, rows), np.linspace(-aspect, aspect, cols), indexing="ij")
        scale = 1 + jitter * rng.uniform(-0.1, 0.1)
        tx, ty = jitter * rng.uniform(-0.08, 0.08, size=2)
        theta = jitter * rng.uniform(-0.1, 0.1)
        c, s = math.cos(theta), math.sin(theta)
        self.x = ((x - tx) * c + (y - ty) * s) / scale
        self.y = (-(x - tx) * s + (y - ty) * c) / scale

    def blob(
        self, cx: float, cy: float, rx: float, ry: float, angle: float = 0.0, edge: float = 0.015
    ) -> Array:
        """Soft-edged ellipse: 1 inside, 0 outside, a ramp ``edge`` wide."""
        c, s = math.cos(angle), math.sin(angle)
        dx, dy = self.x - cx, self.y - cy
        u, v = (dx * c + dy * s) / rx, (-dx * s + dy * c) / ry
        r = np.sqrt(u * u + v * v)
        return np.asarray(np.clip((1 - r) * min(rx, ry) / edge + 0.5, 0, 1), dtype=np.float64)

    def noise(self, cells: int) -> Array:
        """Smooth zero-mean, unit-variance noise with about ``cells`` blobs across the image."""
        low = self.rng.standard_normal((cells + 3, cells + 3)).astype(np.float32)
        resized = Image.fromarray(low).resize((self.cols, self.rows), Image.Resampling.BICUBIC)
        field_ = np.asarray(resized, dtype=np.float64)
        return np.asarray((field_ - field_.mean()) / (field_.std() + 1e-9), dtype=np.float64)

    def lines(self, cells: int, width: float = 0.06) -> Array:
        """Curvy thin line network (zero crossings of smooth noise): vessels, markings, fibres."""
        return np.exp(-((self.noise(cells) / width) ** 2))

    def point_in(self, mask: Array, margin: float = 0.9) -> tuple[float, float]:
        """A random point (cx, cy) inside ``mask`` (in normalised, untransformed-by-jitter units)."""
        ys, xs = np.nonzero(mask > margin)
        if len(ys) == 0:
            return 0.0, 0.0
        i = int(self.rng.integers(len(ys)))
        return float(self.x[ys[i], xs[i]]), float(self.y[ys[i], xs[i]])


def _mix(img: Array, value: Array | float, mask: Array) -> Array:
    return img * (1 - mask) + value * mask


# --------------------------------------------------------------------------- renderers
# Each returns a float image in the modality's natural units: CT → HU, MR → signal (0..~2000),
# US/CR/XR → brightness 0..1.


def _ct_chest(cv: _Canvas, pathology: str) -> Array:
    rng = cv.rng
    img = np.full((cv.rows, cv.cols), -1000.0)
    body = cv.blob(0, 0.05, 0.88, 0.64)
    img = _mix(img, -90 + 15 * cv.noise(6), body)  # subcutaneous fat
    img = _mix(img, 45 + 8 * cv.noise(10), cv.blob(0, 0.05, 0.8, 0.57))  # muscle wall
    lungs = [cv.blob(side * 0.38, 0.0, 0.3, 0.44, side * 0.1) for side in (-1, 1)]
    parenchyma = -860 + 25 * cv.noise(20) + 320 * cv.lines(7, 0.05) * (0.5 + 0.5 * cv.lines(14, 0.2))
    for lung in lungs:
        img = _mix(img, parenchyma, lung)
    img = _mix(img, 40 + 6 * cv.noise(8), cv.blob(0.12, 0.12, 0.24, 0.2))  # heart
    img = _mix(img, 50.0, cv.blob(0.08, 0.36, 0.065, 0.065))  # aorta
    img = _mix(img, 650 + 80 * cv.noise(5), cv.blob(0, 0.5, 0.1, 0.09))  # vertebra
    img = _mix(img, 500.0, cv.blob(0, -0.52, 0.07, 0.035))  # sternum
    if pathology == "nodule":
        for _ in range(int(rng.integers(1, 4))):
            cx, cy = cv.point_in(lungs[int(rng.integers(2))], 0.95)
            r = rng.uniform(0.03, 0.07)
            img = _mix(img, 55.0, cv.blob(cx, cy, r, r * rng.uniform(0.8, 1.2), edge=0.006))
    elif pathology == "effusion":
        level = rng.uniform(0.05, 0.28)
        fluid = np.clip((cv.y - level) / 0.01, 0, 1)
        sides = [0, 1] if rng.random() < 0.4 else [int(rng.integers(2))]
        for side in sides:
            img = _mix(img, 12 + 4 * cv.noise(12), lungs[side] * fluid)
    return img


def _ct_abdomen(cv: _Canvas, pathology: str) -> Array:
    rng = cv.rng
    img = np.full((cv.rows, cv.cols), -1000.0)
    img = _mix(img, -100 + 15 * cv.noise(8), cv.blob(0, 0, 0.9, 0.68))
    img = _mix(img, 35 + 10 * cv.noise(12), cv.blob(0, 0.02, 0.76, 0.56))
    liver = cv.blob(-0.35, -0.1, 0.36, 0.3, 0.3)
    img = _mix(img, 62 + 6 * cv.noise(10), liver)
    img = _mix(img, 50 + 5 * cv.noise(8), cv.blob(0.52, 0.02, 0.14, 0.2, -0.4))  # spleen
    for side in (-1, 1):
        img = _mix(img, 160.0, cv.blob(side * 0.32, 0.28, 0.09, 0.13, side * 0.3))  # kidney cortex
        img = _mix(img, 20.0, cv.blob(side * 0.3, 0.28, 0.035, 0.06))  # renal sinus
    img = _mix(img, 680 + 60 * cv.noise(5), cv.blob(0, 0.42, 0.1, 0.09))  # vertebra
    img = _mix(img, 160.0, cv.blob(0.07, 0.27, 0.045, 0.045))  # aorta
    gut = cv.blob(0.2, -0.3, 0.4, 0.2)
    for _ in range(int(rng.integers(3, 7))):  # bowel gas
        cx, cy = cv.point_in(gut, 0.9)
        r = rng.uniform(0.02, 0.05)
        img = _mix(img, -900.0, cv.blob(cx, cy, r, r * rng.uniform(0.6, 1.4)))
    if pathology == "cyst":
        cx, cy = cv.point_in(cv.blob(-0.35, -0.1, 0.24, 0.18, 0.3), 0.9)
        r = rng.uniform(0.05, 0.11)
        img = _mix(img, 5 + 2 * cv.noise(20), cv.blob(cx, cy, r, r * rng.uniform(0.8, 1.2), edge=0.005))
    return img


def _mr_brain(cv: _Canvas, pathology: str) -> Array:
    rng = cv.rng
    img = 20 + 10 * np.abs(cv.noise(40))
    img = _mix(img, 900 + 40 * cv.noise(10), cv.blob(0, 0, 0.74, 0.9))  # scalp fat
    img = _mix(img, 60.0, cv.blob(0, 0, 0.69, 0.85))  # skull
    brain = cv.blob(0, 0.0, 0.65, 0.8)
    img = _mix(img, 600 + 40 * cv.noise(14) - 180 * cv.lines(9, 0.12), brain)  # cortex + sulci
    img = _mix(img, 820 + 25 * cv.noise(10), cv.blob(0, 0.02, 0.5, 0.63))  # white matter
    for side in (-1, 1):
        img = _mix(img, 180.0, cv.blob(side * 0.1, -0.05, 0.055, 0.22, side * 0.2))  # ventricles
    if pathology == "tumor":
        cx, cy = cv.point_in(cv.blob(0, 0, 0.45, 0.6), 0.9)
        r = rng.uniform(0.07, 0.13)
        img = _mix(img, 450.0, cv.blob(cx, cy, r * 1.9, r * 1.7, rng.uniform(0, 3), edge=0.05))  # oedema
        core = cv.blob(cx, cy, r, r * rng.uniform(0.8, 1.2), rng.uniform(0, 3), edge=0.01)
        img = _mix(img, 1500 + 80 * cv.noise(20), core)  # enhancing rim
        img = _mix(img, 300.0, cv.blob(cx, cy, r * 0.55, r * 0.5, edge=0.01))  # necrosis
    return img


def _mr_knee(cv: _Canvas, pathology: str) -> Array:
    img = 15 + 10 * np.abs(cv.noise(40))
    img = _mix(img, 1100 + 50 * cv.noise(8), cv.blob(0, 0, 0.62, 1.3))  # subcutaneous fat
    img = _mix(img, 480 + 40 * cv.noise(12) + 80 * cv.lines(10, 0.15), cv.blob(0, 0, 0.55, 1.25))
    for bone in (
        cv.blob(0, -0.6, 0.17, 0.6),  # femoral shaft
        cv.blob(0, -0.08, 0.27, 0.16),  # condyles
        cv.blob(0, 0.58, 0.16, 0.5),  # tibial shaft
        cv.blob(0, 0.2, 0.27, 0.1),  # plateau
        cv.blob(0.38, -0.12, 0.08, 0.15),  # patella
    ):
        img = _mix(img, 120.0, bone)  # cortex
        img = _mix(img, 1000 + 50 * cv.noise(16), np.clip(bone * 1.6 - 0.6, 0, 1))  # marrow
    img = _mix(img, 350.0, np.clip(1 - np.abs(cv.y - 0.085) / 0.02, 0, 1) * cv.blob(0, 0.08, 0.3, 0.2))
    return img


def _speckle(cv: _Canvas, img: Array) -> Array:
    speckle = cv.rng.rayleigh(0.8, size=img.shape)
    return img * speckle


def _us_liver(cv: _Canvas, pathology: str) -> Array:
    rng = cv.rng
    dx, dy = cv.x, cv.y + 1.1
    radius, angle = np.hypot(dx, dy), np.arctan2(dx, dy)
    sector = np.clip((0.62 - np.abs(angle)) / 0.02, 0, 1) * np.clip((radius - 0.2) / 0.02, 0, 1)
    sector *= np.clip((2.0 - radius) / 0.02, 0, 1)
    img = 0.45 + 0.05 * cv.noise(10)
    for _ in range(int(rng.integers(2, 4))):  # vessels
        cx, cy = rng.uniform(-0.5, 0.5), rng.uniform(-0.2, 0.6)
        img = _mix(img, 0.05, cv.blob(cx, cy, 0.04, rng.uniform(0.1, 0.3), rng.uniform(0, 3)))
    diaphragm = cv.blob(0, 1.55, 1.3, 0.8, edge=0.01) - cv.blob(0, 1.55, 1.24, 0.74, edge=0.01)
    img = _mix(img, 0.95, np.clip(diaphragm, 0, 1))
    if pathology == "lesion":
        cx, cy = rng.uniform(-0.35, 0.35), rng.uniform(-0.1, 0.5)
        r = rng.uniform(0.08, 0.15)
        img = _mix(img, 0.15, cv.blob(cx, cy, r * 1.25, r * 1.2))  # hypoechoic halo
        img = _mix(img, 0.85, cv.blob(cx, cy, r, r * rng.uniform(0.85, 1.15)))
    img = _speckle(cv, img) * np.exp(-0.35 * radius)
    return np.asarray(img * sector, dtype=np.float64)


def _us_thyroid(cv: _Canvas, pathology: str) -> Array:
    rng = cv.rng
    img = np.where(cv.y < -0.6, 0.35, 0.28) + 0.04 * cv.noise(10)
    img = img + 0.1 * cv.lines(18, 0.2) * (np.abs(cv.y + 0.45) < 0.15)  # strap muscles
    lobes = [cv.blob(side * 0.55, 0.1, 0.34, 0.26) for side in (-1, 1)]
    for lobe in lobes:
        img = _mix(img, 0.6 + 0.04 * cv.noise(14), lobe)
    img = _mix(img, 0.85, cv.blob(0, 0.05, 0.24, 0.21) - cv.blob(0, 0.05, 0.2, 0.17))  # tracheal ring
    img = _mix(
        img, 0.04, cv.blob(0, 0.05, 0.2, 0.17) + np.clip((cv.y - 0.05) / 0.02, 0, 1) * (np.abs(cv.x) < 0.2)
    )
    for side in (-1, 1):
        img = _mix(img, 0.03, cv.blob(side * 1.02, 0.12, 0.11, 0.11))  # carotids
    if pathology == "nodule":
        cx, cy = cv.point_in(lobes[int(rng.integers(2))], 0.95)
        r = rng.uniform(0.07, 0.12)
        img = _mix(img, 0.18, cv.blob(cx, cy, r, r * rng.uniform(0.8, 1.2), edge=0.008))
        for _ in range(int(rng.integers(0, 3))):  # microcalcifications
            img = _mix(
                img, 1.0, cv.blob(cx + rng.uniform(-r, r) / 2, cy + rng.uniform(-r, r) / 2, 0.012, 0.012)
            )
    return np.clip(_speckle(cv, img), 0, None)


def _cr_chest(cv: _Canvas, pathology: str) -> Array:
    rng = cv.rng
    img = np.full((cv.rows, cv.cols), 0.04)
    img = _mix(img, 0.55 + 0.03 * cv.noise(6), cv.blob(0, 0.15, 0.9, 1.05))  # soft tissue
    lungs = [cv.blob(side * 0.4, -0.12, 0.3, 0.6, side * 0.05) for side in (-1, 1)]
    ribs = 0.09 * np.clip(np.sin(14 * (cv.y + 0.25 * cv.x**2)) * 3 - 2, 0, 1)
    hilum = [np.exp(-((cv.x - side * 0.2) ** 2 + (cv.y + 0.05) ** 2) / 0.25) for side in (-1, 1)]
    collapsed_side = int(rng.integers(2)) if pathology == "pneumothorax" else -1
    for side, lung in enumerate(lungs):
        markings = 0.16 * cv.lines(8, 0.07) * (0.4 + hilum[side])
        if side == collapsed_side:
            sign = -1 if side == 0 else 1
            shrink = rng.uniform(0.55, 0.78)
            inner = cv.blob(sign * (0.4 - 0.3 * (1 - shrink) * 0.8), -0.12 + 0.6 * (1 - shrink) * 0.6,
                            0.3 * shrink, 0.6 * shrink, sign * 0.05, edge=0.008)  # fmt: skip
            pleura = np.clip(inner * (1 - inner) * 4, 0, 1) * lung
            img = _mix(img, 0.1 + ribs, lung)  # no lung markings outside the collapsed lung
            img = _mix(img, 0.2 + markings + ribs, lung * inner)
            img = _mix(img, 0.42, pleura)
        else:
            img = _mix(img, 0.2 + markings + ribs, lung)
    img = _mix(img, 0.62, cv.blob(0.0, -0.25, 0.11, 0.55))  # mediastinum
    img = _mix(img, 0.63 + 0.02 * cv.noise(5), cv.blob(0.14, 0.3, 0.3, 0.26))  # heart
    img = _mix(img, 0.68, cv.blob(0, 0.0, 0.06, 1.1))  # spine
    for side in (-1, 1):
        img = _mix(img, 0.75, cv.blob(side * 0.35, -0.78, 0.32, 0.035, side * -0.25))  # clavicles
    return img


def _xr_hand(cv: _Canvas, pathology: str) -> Array:
    rng = cv.rng
    img = np.full((cv.rows, cv.cols), 0.05)
    img = _mix(img, 0.32, cv.blob(0, 0.55, 0.42, 0.4))  # palm
    bones: list[Array] = []
    spread = rng.uniform(0.12, 0.2)
    for finger in range(5):
        theta = (finger - 2) * spread + (0.55 if finger == 0 else 0.0)
        base_x, base_y = -0.3 + 0.15 * finger, 0.65 if finger else 0.75
        d = (math.sin(theta), -math.cos(theta))
        n_seg = 3 if finger == 0 else 4
        lengths = [0.3, 0.2, 0.14, 0.1][:n_seg] if finger else [0.24, 0.18, 0.13]
        img = _mix(img, 0.32, cv.blob(base_x + d[0] * 0.4, base_y + d[1] * 0.4, 0.07, 0.45, theta))
        pos = 0.0
        for length in lengths:
            centre = pos + length / 2
            bones.append(
                cv.blob(base_x + d[0] * centre, base_y + d[1] * centre, 0.035, length / 2 - 0.015, theta)
            )
            pos += length + 0.02
    for bone in bones:
        img = _mix(img, 0.85, bone)
        img = _mix(img, 0.68 + 0.03 * cv.noise(20), np.clip(bone * 2 - 1, 0, 1))  # medulla
    if pathology == "fracture":
        bone = bones[int(rng.integers(len(bones)))]
        ys, xs = np.nonzero(bone > 0.9)
        if len(ys):
            cy, cx = (
                float(cv.y[ys[len(ys) // 2], xs[len(xs) // 2]]),
                float(cv.x[ys[len(ys) // 2], xs[len(xs) // 2]]),
            )
            phi = rng.uniform(0, math.pi)
            dist = np.abs((cv.x - cx) * math.cos(phi) + (cv.y - cy) * math.sin(phi))
            img = _mix(img, 0.3, np.clip(1 - dist / 0.012, 0, 1) * np.clip(bone * 1.5, 0, 1))
    return img


@dataclass(frozen=True)
class _Class:
    modality: str
    anatomy: str
    pathology: str
    render: Callable[[_Canvas, str], Array]
    sizes: tuple[int, ...]


_DICOM_CLASSES: tuple[_Class, ...] = (
    _Class("CT", "chest", "normal", _ct_chest, (192, 224, 256)),
    _Class("CT", "chest", "nodule", _ct_chest, (192, 224, 256)),
    _Class("CT", "chest", "effusion", _ct_chest, (192, 224, 256)),
    _Class("CT", "abdomen", "normal", _ct_abdomen, (192, 224, 256)),
    _Class("CT", "abdomen", "cyst", _ct_abdomen, (192, 224, 256)),
    _Class("MR", "brain", "normal", _mr_brain, (160, 192, 224)),
    _Class("MR", "brain", "tumor", _mr_brain, (160, 192, 224)),
    _Class("MR", "knee", "normal", _mr_knee, (160, 192, 224)),
    _Class("US", "liver", "normal", _us_liver, (128, 160, 192)),
    _Class("US", "liver", "lesion", _us_liver, (128, 160, 192)),
    _Class("US", "thyroid", "nodule", _us_thyroid, (128, 160, 192)),
    _Class("CR", "chest", "normal", _cr_chest, (192, 224, 256)),
    _Class("CR", "chest", "pneumothorax", _cr_chest, (192, 224, 256)),
)
_PNG_CLASSES: tuple[_Class, ...] = (
    _Class("XR", "hand", "normal", _xr_hand, (160, 192, 224)),
    _Class("XR", "hand", "fracture", _xr_hand, (160, 192, 224)),
)


# --------------------------------------------------------------------------- fake identities

_SYLLABLES = ("ka", "lo", "mi", "ren", "to", "sa", "vel", "du", "nor", "pi", "zan", "qu", "bex", "ol")


def _word(rng: np.random.Generator, n: int) -> str:
    return "".join(_SYLLABLES[int(i)] for i in rng.integers(len(_SYLLABLES), size=n)).upper()


def _identity(rng: np.random.Generator) -> dict[str, str]:
    """Fake, clearly synthetic identifying values (all start with a canary-friendly marker)."""
    year, month, day = int(rng.integers(1930, 2005)), int(rng.integers(1, 13)), int(rng.integers(1, 29))
    return {
        "PatientName": f"ZZDEMO^{_word(rng, 3)}",
        "PatientID": f"DEMO-{int(rng.integers(10**5, 10**6))}",
        "PatientBirthDate": f"{year:04d}{month:02d}{day:02d}",
        "PatientAddress": f"{int(rng.integers(1, 999))} ZZCanary Lane {_word(rng, 2)}",
        "InstitutionName": f"ZZDEMO Hospital {_word(rng, 2)}",
        "ReferringPhysicianName": f"ZZREF^{_word(rng, 2)}",
        "AccessionNumber": f"ZZACC{int(rng.integers(10**7, 10**8))}",
        "ImageComments": f"canary {_word(rng, 4)} seen in clinic",
    }


# --------------------------------------------------------------------------- DICOM writing

_SOP = {
    "CT": CTImageStorage,
    "MR": MRImageStorage,
    "US": UltrasoundImageStorage,
    "CR": ComputedRadiographyImageStorage,
}
_BODY_PART = {"chest": "CHEST", "abdomen": "ABDOMEN", "brain": "BRAIN", "knee": "KNEE", "liver": "LIVER"}
_BODY_PART["thyroid"] = "THYROID"


def _uid(seed: int, *parts: object) -> UID:
    return generate_uid(entropy_srcs=[str(seed), *(str(p) for p in parts)])


def _to_us8(img: Array, rng: np.random.Generator) -> NDArray[np.uint8]:
    gain = rng.uniform(200, 250)
    return np.clip(img * gain + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)


def _pixels(cls: _Class, cv: _Canvas, index: int) -> tuple[NDArray[np.generic], dict[str, object], str, int]:
    """(stored array, extra tags, photometric interpretation, bits stored) for one image."""
    rng = cv.rng
    img = cls.render(cv, cls.pathology)
    tags: dict[str, object] = {}
    if cls.modality == "CT":
        hu = img * rng.uniform(0.97, 1.03) + rng.uniform(-15, 15) + rng.normal(0, 12, img.shape)
        hu = np.clip(np.rint(hu), -1024, 2000)
        window = (-600, 1500) if cls.anatomy == "chest" else (40, 400)
        tags.update(RescaleSlope=1, RescaleIntercept=-1024, RescaleType="HU", WindowCenter=window[0])
        tags["WindowWidth"] = window[1]
        if index % 2:  # signed 12-bit storage, HU stored directly
            tags["RescaleIntercept"] = 0
            return hu.astype(np.int16), tags, "MONOCHROME2", 12
        return (hu + 1024).astype(np.uint16), tags, "MONOCHROME2", 12
    if cls.modality == "MR":
        signal = img * rng.uniform(0.8, 1.25) + np.abs(rng.normal(0, 15, img.shape))
        stored = np.clip(np.rint(signal), 0, 4095).astype(np.uint16)
        if index % 3 == 0:  # some with a window, the rest rely on min–max
            tags.update(WindowCenter=int(np.percentile(stored, 60)), WindowWidth=int(stored.max()) or 1)
        return stored, tags, "MONOCHROME2", 12
    if cls.modality == "US":
        return _to_us8(img, rng), tags, "MONOCHROME2", 8
    # CR: MONOCHROME1, so high stored values (low attenuation) display dark after inversion.
    display = img * rng.uniform(0.9, 1.1) + rng.uniform(-0.03, 0.03) + rng.normal(0, 0.012, img.shape)
    stored = np.clip(np.rint((1 - np.clip(display, 0, 1)) * 4095), 0, 4095).astype(np.uint16)
    tags.update(WindowCenter=2048, WindowWidth=4096)
    return stored, tags, "MONOCHROME1", 12


def _write_if_changed(path: Path, data: bytes) -> None:
    # Regenerating the same archive must not touch unchanged files: their ETag (size + mtime) stays,
    # so a re-ingest skips them.
    if path.exists() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return
    path.write_bytes(data)


def _write_dicom(
    path: Path, cls: _Class, index: int, seed: int, rng: np.random.Generator, phi: dict[str, str]
) -> None:
    rows = int(rng.choice(cls.sizes))
    cols = int(rows * 1.25) // 8 * 8 if cls.modality == "US" else rows
    cv = _Canvas(rows, cols, rng)
    arr, tags, photometric, bits_stored = _pixels(cls, cv, index)
    sop = _SOP[cls.modality]
    if cls.modality == "US" and index % 4 == 1:  # a multi-frame cine loop: drifting speckle
        n_frames = int(rng.integers(3, 6))
        frames = [arr]
        for _ in range(n_frames - 1):
            frames.append(_to_us8(cls.render(_Canvas(rows, cols, rng, jitter=0.15), cls.pathology), rng))
        arr = np.stack(frames)
        sop = UltrasoundMultiFrameImageStorage

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    key_parts = (cls.modality, cls.anatomy, cls.pathology, index)
    ds.SOPClassUID = sop
    ds.SOPInstanceUID = _uid(seed, *key_parts, "instance")
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = _uid(seed, *key_parts, "study")
    ds.SeriesInstanceUID = _uid(seed, *key_parts, "series")
    ds.FrameOfReferenceUID = _uid(seed, *key_parts, "frame")
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.Modality = cls.modality
    ds.BodyPartExamined = _BODY_PART[cls.anatomy]
    ds.StudyDate = ds.SeriesDate = "20240315"
    ds.StudyTime = "101500"
    ds.StudyID = str(index + 1)
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.PatientSex = "O"
    ds.Manufacturer = "radsearch synthetic"
    ds.BurnedInAnnotation = "NO"
    for tag_name, tag_value in phi.items():
        setattr(ds, tag_name, tag_value)
    ds.set_pixel_data(arr, photometric, bits_stored, generate_instance_uid=False)
    for name, value in tags.items():
        setattr(ds, name, value)
    if cls.modality == "CR":
        ds.ViewPosition = "PA"
    if index % 4 == 2:
        ds.compress(RLELossless, generate_instance_uid=False)
    elif index % 6 == 3 and _j2k_available():
        ds.compress(JPEG2000Lossless, generate_instance_uid=False)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    _write_if_changed(path, buffer.getvalue())


@functools.cache
def _j2k_available() -> bool:
    try:
        return bool(get_encoder(JPEG2000Lossless).is_available)
    except Exception:  # no encoder for this syntax in this pydicom/plugin set
        return False


def _write_png(path: Path, cls: _Class, index: int, rng: np.random.Generator) -> None:
    size = int(rng.choice(cls.sizes))
    cv = _Canvas(size, int(size * 0.8) // 8 * 8, rng)
    img = cls.render(cv, cls.pathology) * rng.uniform(0.9, 1.1) + rng.normal(0, 0.015, (cv.rows, cv.cols))
    img = np.clip(img, 0, 1)
    if index % 3 == 0:  # some 16-bit
        pixels = np.rint(img * 60000 + 1000).astype(np.uint16)
    else:
        pixels = np.rint(img * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    _write_if_changed(path, buffer.getvalue())


# --------------------------------------------------------------------------- the archive


def _splits(n: int, rng: np.random.Generator) -> list[str]:
    n_train = max(1, round(n * TRAIN_FRACTION)) if n > 1 else n
    order = rng.permutation(n)
    out = ["test"] * n
    for i in order[:n_train]:
        out[int(i)] = "train"
    return out


def _remove_beyond(folder: Path, prefix: str, suffix: str, count: int) -> None:
    """Remove the archive's own images ``{prefix}{NNN}{suffix}`` numbered ``count`` or more (left
    by a larger archive); any other file is not the archive's, and stays."""
    for path in folder.glob(f"{prefix}*{suffix}"):
        number = path.name[len(prefix) : -len(suffix)]
        if len(number) == 3 and number.isdigit() and int(number) >= count:
            path.unlink()


def generate_demo_archive(out_dir: Path, *, per_class: int = 12, seed: int = 0) -> DemoArchive:
    """Write the synthetic archive under ``out_dir`` (created if needed) and return what it holds.

    ``per_class`` images for each of the 13 DICOM classes (CT, MR, US, CR) and 2 PNG classes (XR
    hand); about 70 % of each class is ``train``, the rest ``test``. The same ``seed`` gives the
    same bytes. Images an earlier call with a larger ``per_class`` wrote are removed, so that the
    folder holds what the manifest lists.
    """
    if per_class < 1:
        raise ValueError("per_class must be at least 1")
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, str, str, str, str, str]] = []
    phi_strings: set[str] = set()

    for class_index, cls in enumerate(_DICOM_CLASSES):
        folder = root / "dicom" / cls.modality / cls.anatomy / cls.pathology
        folder.mkdir(parents=True, exist_ok=True)
        splits = _splits(per_class, np.random.default_rng([seed, class_index, 7]))
        for index in range(per_class):
            rng = np.random.default_rng([seed, class_index, index])
            phi = _identity(rng)
            phi_strings.update(phi.values())
            name = f"{cls.anatomy}_{cls.pathology}_{index:03d}.dcm"
            _write_dicom(folder / name, cls, index, seed, rng, phi)
            key = (folder / name).relative_to(root).as_posix()
            rows.append((key, cls.modality, cls.anatomy, cls.pathology, DATASET_NAME, splits[index]))
        _remove_beyond(folder, f"{cls.anatomy}_{cls.pathology}_", ".dcm", per_class)

    (root / "png").mkdir(parents=True, exist_ok=True)
    for offset, cls in enumerate(_PNG_CLASSES):
        class_index = len(_DICOM_CLASSES) + offset
        splits = _splits(per_class, np.random.default_rng([seed, class_index, 7]))
        for index in range(per_class):
            rng = np.random.default_rng([seed, class_index, index])
            name = f"{cls.anatomy}_{cls.pathology}_{index:03d}.png"
            _write_png(root / "png" / name, cls, index, rng)
            rows.append(
                (f"png/{name}", cls.modality, cls.anatomy, cls.pathology, DATASET_NAME, splits[index])
            )
        _remove_beyond(root / "png", f"{cls.anatomy}_{cls.pathology}_", ".png", per_class)

    manifest = root / "manifest.csv"
    with manifest.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(MANIFEST_HEADER)
        writer.writerows(sorted(rows))
    classes = [(c.modality, c.anatomy, c.pathology) for c in (*_DICOM_CLASSES, *_PNG_CLASSES)]
    return DemoArchive(
        root=root, n_files=len(rows), classes=classes, manifest=manifest, phi_strings=sorted(phi_strings)
    )
