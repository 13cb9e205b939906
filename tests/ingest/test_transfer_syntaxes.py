"""Every storage form of the same pixels embeds the same.

One grey and one colour source image are written in every transfer syntax pydicom (with its
installed plugins) can write here, in both byte orders, as MONOCHROME1/2, RGB (both planar
configurations), YBR_FULL, YBR_FULL_422 and PALETTE COLOR; JPEG lossless (Process 14, selection
value 1), which nothing installed encodes, is written by a small encoder in this file. Each file goes
through `decode_dicom` and then through every registered encoder (real architectures, random
weights; the transformers models in reduced sizes); its embedding must have cosine >= 0.999 to the
uncompressed original's (lossy JPEG 2000 and near-lossless JPEG-LS: >= 0.98). The table
variant x encoder -> cosine is printed (``pytest -s``) and is the failure message.

"Same pixels": MONOCHROME1 stores inverted values (with the window mirrored), so it *displays* as
the MONOCHROME2 original; PALETTE COLOR stores indices whose LUT maps to the RGB original's colours;
YBR stores the RGB original converted (pydicom's conversion; the colour source has equal horizontal
pairs, so 4:2:2 subsampling loses nothing). Identical decoded frames embed identically (the encoders
are deterministic), so each encoder embeds each distinct decoded frame once, in one batch.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable
from functools import partial
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pydicom.data
import pytest
from numpy.typing import NDArray
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.processing import convert_color_space
from pydicom.uid import (
    JPEG2000,
    UID,
    AllTransferSyntaxes,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from core.config import RuntimeSettings, Settings
from core.encoders.base import Encoder
from core.encoders.registry import get_spec, list_specs, load_encoder
from core.encoders.spec import EncoderFamily, EncoderSpec
from ingest.readers import DecodeLimits
from ingest.readers.dicom import decode_dicom

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

SIDE = 64
LOSSLESS_MIN = 0.999
LOSSY_MIN = 0.98
CONTROL = "control: grey12 MONOCHROME1 shown without inversion (must differ)"

# Reduced architectures (same model classes and code paths, as in tests/core/test_encoder_zoo.py):
# full-size SAM at 1024 px or CLIP ViT-L/14 alone would take most of the time budget. Input sizes
# (and so the whole preprocessing) stay the registry's, except SAM/MedSAM, whose tiny variants are
# built for 64 px.
_VIT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
_SAM = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "global_attn_indexes": [1],
    "image_size": 64,
    "mlp_dim": 64,
    "output_channels": 16,
    "window_size": 2,
}
_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"width": 64, "layers": 2, "head_width": 32},
    "text_cfg": {"width": 64, "layers": 2, "heads": 2},
}
_DINO = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 56}
REDUCED: dict[str, dict[str, Any]] = {
    "vit-b16-in21k": {"model_overrides": _VIT, "dim": 32},
    "mae-vit-b16": {"model_overrides": _VIT, "dim": 32},
    "dinov2-vit-b14": {"model_overrides": _DINO, "dim": 32},
    "rad-dino": {"model_overrides": _DINO, "dim": 32},
    "resnet50": {
        "model_overrides": {"embedding_size": 8, "hidden_sizes": [8, 16, 32, 64], "depths": [1, 1, 1, 1]},
        "dim": 64,
    },
    "sam-vit-b": {"model_overrides": _SAM, "dim": 16, "input_size": 64},
    "medsam-vit-b": {"model_overrides": _SAM, "dim": 16, "input_size": 64},
    "medclip-vit": {"model_overrides": {"embed_dim": 8, "depths": [1, 1], "num_heads": [1, 2]}, "dim": 8},
    "clip-vit-b16": {"model_overrides": _CLIP, "dim": 32},
    "clip-vit-l14": {"model_overrides": _CLIP, "dim": 32},
    # timm's ViT-Tiny/16 for the vision tower (same timm ViT class); the BERT text tower keeps its
    # size (open_clip reads its config from a file) but is only built, not run.
    "biomedclip": {
        "model_overrides": {"embed_dim": 32, "vision_cfg": {"timm_model_name": "vit_tiny_patch16_224"}},
        "dim": 32,
    },
}


# ------------------------------------------------------------------------------------ sources


def _grey_values(bits: int, signed: bool) -> NDArray[np.int32]:
    """A smooth 'scan' (disc, gradient, ripple, noise) over most of the stored range."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:SIDE, 0:SIDE] / SIDE
    image = 0.3 + 0.5 * (((xx - 0.45) ** 2 + (yy - 0.5) ** 2) < 0.08) + 0.15 * np.sin(xx * 20) * yy
    image = np.clip(image + rng.normal(0, 0.02, image.shape), 0, 1) * (2**bits - 1)
    values: NDArray[np.int32] = np.rint(image).astype(np.int32)
    return values - np.int32(2 ** (bits - 1)) if signed else values


def _palette_source() -> tuple[NDArray[np.uint8], NDArray[np.uint8]]:
    """(indices, 256x3 palette): at most 256 colours, so a PALETTE COLOR form exists; horizontal
    pixel pairs are equal, so YBR_FULL_422 subsampling is exact."""
    palette = np.sort(np.random.default_rng(1).integers(0, 256, (256, 3)), axis=0).astype(np.uint8)
    grey = _grey_values(8, signed=False)
    indices = np.repeat(grey[:, ::2], 2, axis=1).astype(np.uint8)
    return indices, palette


def _dataset(photometric: str, samples: int, bits_allocated: int, bits_stored: int, signed: bool) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT"
    ds.Rows = ds.Columns = SIDE
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = photometric
    if samples == 3:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits_allocated, bits_stored, bits_stored - 1
    ds.PixelRepresentation = int(signed)
    return ds


def _set_pixels(ds: Dataset, values: NDArray[Any]) -> Dataset:
    dtype = {(8, 0): "u1", (16, 0): "<u2", (8, 1): "i1", (16, 1): "<i2"}
    ds.PixelData = np.ascontiguousarray(
        values.astype(dtype[int(ds.BitsAllocated), int(ds.PixelRepresentation)])
    ).tobytes()
    return ds


def _grey(bits: int, signed: bool, *, monochrome1: bool = False) -> Dataset:
    """12-bit unsigned CT-like (rescale, window), 16-bit signed, or 8-bit grey. MONOCHROME1 stores
    the values inverted within the stored range and the window mirrored: the same displayed image."""
    values = _grey_values(bits, signed)
    ds = _dataset("MONOCHROME1" if monochrome1 else "MONOCHROME2", 1, 8 if bits == 8 else 16, bits, signed)
    if bits == 12:
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.WindowCenter, ds.WindowWidth = 0, 1500
    top = -1 if signed else 2**bits - 1  # stored v -> top - v mirrors the range
    if monochrome1:
        values = top - values
        if "WindowCenter" in ds:
            # A stored value s displays as the window of s*slope+intercept; mirrored, the centre
            # moves to the image of (top - (c - b)) and by one (LINEAR's c - 0.5 is asymmetric).
            b = float(ds.RescaleIntercept)
            ds.WindowCenter = top - (float(ds.WindowCenter) - b) + b + 1
    return _set_pixels(ds, values)


def _rgb(*, planar: int = 0, bits: int = 8) -> Dataset:
    indices, palette = _palette_source()
    rgb = palette[indices]
    ds = _dataset("RGB", 3, bits, bits, False)
    ds.PlanarConfiguration = planar
    values = rgb.astype(np.uint16) * 257 if bits == 16 else rgb
    return _set_pixels(ds, values.transpose(2, 0, 1) if planar else values)


def _ybr(kind: str) -> Dataset:
    indices, palette = _palette_source()
    ybr = convert_color_space(palette[indices], "RGB", "YBR_FULL")
    ds = _dataset(kind, 3, 8, 8, False)
    if kind == "YBR_FULL_422":
        # Per horizontal pair: Y1 Y2 Cb Cr (PS3.5 8.2.1).
        packed = np.stack([ybr[:, 0::2, 0], ybr[:, 1::2, 0], ybr[:, 0::2, 1], ybr[:, 0::2, 2]], axis=-1)
        ds.PixelData = np.ascontiguousarray(packed).tobytes()
        return ds
    return _set_pixels(ds, ybr)


def _palette(index_bits: int = 8) -> Dataset:
    indices, palette = _palette_source()
    ds = _dataset("PALETTE COLOR", 1, index_bits, index_bits, False)
    for channel, colour in zip(palette.T, ("Red", "Green", "Blue"), strict=True):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, 16])
        setattr(ds, f"{colour}PaletteColorLookupTableData", (channel.astype("<u2") * 257).tobytes())
    return _set_pixels(ds, indices)


# ------------------------------------------------------------------------------------ writers


def _save(ds: Dataset, *, implicit: bool = False, little: bool = True) -> bytes:
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True, implicit_vr=implicit, little_endian=little)
    return out.getvalue()


def _native(ds: Dataset, uid: UID) -> bytes:
    """Uncompressed in ``uid``. pydicom writes OW pixel data and LUT data as the bytes it holds,
    so for big endian the 16-bit words are swapped here."""
    d = copy.deepcopy(ds)
    d.file_meta.TransferSyntaxUID = uid
    if uid == ExplicitVRBigEndian:
        words = ["PixelData"] if int(d.BitsAllocated) == 16 else []
        words += [k for k in d.dir() if k.endswith("PaletteColorLookupTableData")]
        for keyword in words:
            setattr(d, keyword, np.frombuffer(getattr(d, keyword), "<u2").astype(">u2").tobytes())
    return _save(d, implicit=uid == ImplicitVRLittleEndian, little=uid != ExplicitVRBigEndian)


def _compressed(ds: Dataset, uid: UID, **kwargs: Any) -> bytes:
    d = copy.deepcopy(ds)
    d.compress(uid, **kwargs)
    return _save(d)


def _jpeg_lossless_frame(values: NDArray[Any], precision: int) -> bytes:
    """One grey frame as a JPEG lossless bitstream (ITU-T T.81 Annex H: SOF3, first-order
    prediction, selection value 1), with fixed 5-bit Huffman codes for the 17 SSSS categories."""
    x = values.astype(np.int64)
    pred = np.empty_like(x)
    pred[0, 0] = 1 << (precision - 1)
    pred[0, 1:] = x[0, :-1]
    pred[1:, 0] = x[:-1, 0]
    pred[1:, 1:] = x[1:, :-1]
    diff = (x - pred) % 65536
    diff = np.where(diff > 32768, diff - 65536, diff)
    acc, n_bits, data = 0, 0, bytearray()

    def flush() -> None:
        nonlocal n_bits, acc
        while n_bits >= 8:
            n_bits -= 8
            byte = (acc >> n_bits) & 0xFF
            data.append(byte)
            if byte == 0xFF:
                data.append(0)  # byte stuffing
        acc &= (1 << n_bits) - 1

    for d in diff.ravel().tolist():
        ssss = 16 if d == 32768 else abs(d).bit_length()
        acc, n_bits = (acc << 5) | ssss, n_bits + 5
        if 0 < ssss < 16:
            acc, n_bits = (acc << ssss) | ((d if d > 0 else d - 1) & ((1 << ssss) - 1)), n_bits + ssss
        flush()
    if n_bits:
        pad = 8 - n_bits
        acc, n_bits = (acc << pad) | ((1 << pad) - 1), n_bits + pad
        flush()
    rows, cols = values.shape
    sof = bytes(
        [0xFF, 0xC3, 0, 11, precision, *rows.to_bytes(2, "big"), *cols.to_bytes(2, "big"), 1, 1, 0x11, 0]
    )
    counts = [0] * 16
    counts[4] = 17  # all 17 categories with 5-bit codes
    dht = bytes([0xFF, 0xC4, 0, 36, 0x00, *counts, *range(17)])
    sos = bytes([0xFF, 0xDA, 0, 8, 1, 1, 0x00, 1, 0, 0])
    return b"\xff\xd8" + sof + dht + sos + bytes(data) + b"\xff\xd9"


def _jpeg_lossless(ds: Dataset, uid: UID) -> bytes:
    d = copy.deepcopy(ds)
    bits, allocated = int(d.BitsStored), int(d.BitsAllocated)
    stored = np.frombuffer(d.PixelData, "u1" if allocated == 8 else "<u2").reshape(SIDE, SIDE)
    d.PixelData = encapsulate([_jpeg_lossless_frame(stored & ((1 << bits) - 1), bits)])
    d["PixelData"].VR = "OB"
    d.file_meta.TransferSyntaxUID = uid
    return _save(d)


# ------------------------------------------------------------------------------------ corpus

Variant = tuple[str, str, Callable[[], bytes], float]  # (name, original's name, writer, threshold)

LOSSLESS_COMPRESSED = (RLELossless, JPEGLSLossless, JPEG2000Lossless)
NATIVE = (ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian)
ORIGINALS: dict[str, Callable[[], bytes]] = {
    "grey12": lambda: _native(_grey(12, False), ExplicitVRLittleEndian),
    "grey16s": lambda: _native(_grey(16, True), ExplicitVRLittleEndian),
    "grey8": lambda: _native(_grey(8, False), ExplicitVRLittleEndian),
    "rgb": lambda: _native(_rgb(), ExplicitVRLittleEndian),
}
_NO_HTJ2K = "pydicom registers no HTJ2K encoder (its plugins here decode HTJ2K only)"
# Syntaxes nothing installed here can write, with the reason (printed in the table's footer).
NOT_WRITTEN = {
    "JPEG Baseline (Process 1)": "lossy 8-bit JPEG: pydicom and its plugins have no JPEG encoder",
    "JPEG Extended (Process 2 and 4)": "lossy JPEG: pydicom and its plugins have no JPEG encoder",
    "High-Throughput JPEG 2000 Image Compression (Lossless Only)": _NO_HTJ2K,
    "High-Throughput JPEG 2000 with RPCL Options Image Compression (Lossless Only)": _NO_HTJ2K,
    "High-Throughput JPEG 2000 Image Compression": _NO_HTJ2K,
}


def _variants() -> list[Variant]:
    out: list[Variant] = []
    for name, bits, signed in (("grey12", 12, False), ("grey16s", 16, True), ("grey8", 8, False)):
        for mono1 in (False, True):
            ds = _grey(bits, signed, monochrome1=mono1)
            label = f"{name} {'MONOCHROME1' if mono1 else 'MONOCHROME2'}"
            out += [
                (f"{label} {uid.name}", name, partial(_native, ds, uid), LOSSLESS_MIN)
                for uid in (ExplicitVRLittleEndian, *NATIVE)
            ]
            out += [
                (f"{label} {uid.name}", name, partial(_compressed, ds, uid), LOSSLESS_MIN)
                for uid in LOSSLESS_COMPRESSED
            ]
            out += [
                (f"{label} {uid.name}", name, partial(_jpeg_lossless, ds, uid), LOSSLESS_MIN)
                for uid in (JPEGLossless, JPEGLosslessSV1)
            ]
        ds = _grey(bits, signed)
        out.append(
            (
                f"{name} {JPEG2000.name} (lossy, 42 dB)",
                name,
                partial(_compressed, ds, JPEG2000, j2k_psnr=[42]),
                LOSSY_MIN,
            )
        )
        out.append(
            (
                f"{name} {JPEGLSNearLossless.name} (NEAR=2)",
                name,
                partial(_compressed, ds, JPEGLSNearLossless, jls_error=2),
                LOSSY_MIN,
            )
        )

    rgb = _rgb()
    colour: list[tuple[str, Dataset, UID, dict[str, Any]]] = [
        ("RGB", rgb, uid, {}) for uid in (ExplicitVRLittleEndian, *NATIVE, *LOSSLESS_COMPRESSED)
    ]
    colour += [
        ("RGB planar 1", _rgb(planar=1), ExplicitVRLittleEndian, {}),
        ("RGB planar 1", _rgb(planar=1), ExplicitVRBigEndian, {}),
        ("RGB 16-bit", _rgb(bits=16), ExplicitVRLittleEndian, {}),
        ("RGB 16-bit", _rgb(bits=16), ExplicitVRBigEndian, {}),
        ("RGB 16-bit", _rgb(bits=16), RLELossless, {}),
        ("RGB (RCT: YBR_RCT)", rgb, JPEG2000Lossless, {"use_mct": True}),
        ("YBR_FULL_422", _ybr("YBR_FULL_422"), ExplicitVRLittleEndian, {}),
        ("YBR_FULL_422", _ybr("YBR_FULL_422"), ExplicitVRBigEndian, {}),
        ("PALETTE COLOR 16-bit LUT", _palette(), ExplicitVRLittleEndian, {}),
        ("PALETTE COLOR 16-bit LUT", _palette(), ExplicitVRBigEndian, {}),
        ("PALETTE COLOR 16-bit index", _palette(16), ExplicitVRBigEndian, {}),
    ]
    colour += [
        ("YBR_FULL", _ybr("YBR_FULL"), uid, {})
        for uid in (ExplicitVRLittleEndian, ExplicitVRBigEndian, *LOSSLESS_COMPRESSED)
    ]
    colour += [
        ("PALETTE COLOR 16-bit LUT", _palette(), uid, {})
        for uid in (ImplicitVRLittleEndian, *LOSSLESS_COMPRESSED)
    ]
    for label, ds, uid, kwargs in colour:
        native = uid in (ExplicitVRLittleEndian, *NATIVE)
        writer = partial(_native, ds, uid) if native else partial(_compressed, ds, uid, **kwargs)
        out.append((f"rgb {label} {uid.name}", "rgb", writer, LOSSLESS_MIN))
    out.append(
        (
            "rgb RGB JPEG 2000 (lossy, 42 dB, ICT)",
            "rgb",
            partial(_compressed, rgb, JPEG2000, j2k_psnr=[42]),
            LOSSY_MIN,
        )
    )
    return out


def _bundled() -> list[tuple[str, str, list[str]]]:
    """pydicom's bundled files that hold the same pixels in several syntaxes: (group, original, others)."""
    return [
        (
            "MR_small",
            "MR_small.dcm",
            [
                "MR_small_bigendian.dcm",
                "MR_small_expb.dcm",
                "MR_small_implicit.dcm",
                "MR_small_padded.dcm",
                "MR_small_RLE.dcm",
                "MR_small_jpeg_ls_lossless.dcm",
                "MR_small_jp2klossless.dcm",
            ],
        ),
        ("SC_rgb_small_odd", "SC_rgb_small_odd.dcm", ["SC_rgb_small_odd_big_endian.dcm"]),
        ("SC_rgb_rle", "SC_rgb_rle.dcm", ["SC_rgb_rle_16bit.dcm", "SC_rgb_rle_32bit.dcm"]),
    ]


# ------------------------------------------------------------------------------------ encoders


def _spec(name: str) -> EncoderSpec:
    spec = get_spec(name)
    return spec.model_copy(update=REDUCED[name]) if name in REDUCED else spec


def _decode(data: bytes) -> NDArray[np.uint8]:
    frames = decode_dicom(data, "variant.dcm", limits=DecodeLimits(), hash_key=b"k").frames
    assert len(frames) == 1
    return frames[0]


def _key(frame: NDArray[np.uint8]) -> str:
    return hashlib.sha256(frame.tobytes() + str(frame.shape).encode()).hexdigest()


def test_every_storage_form_of_the_same_pixels_embeds_the_same(tmp_path: Path) -> None:
    """Before the test existed nothing checked that e.g. a big-endian or JPEG-LS copy of an image
    lands on the same vector as the uncompressed one; a decoder that forgot the MONOCHROME1
    inversion, a LUT's byte order or the YBR conversion would put one image in the index twice,
    far apart. Decoded frames are also compared pixel by pixel (lossless: |diff| <= 1)."""
    rows: list[tuple[str, str, NDArray[np.uint8], float]] = []  # (variant, original, frame, threshold)
    originals = {name: _decode(write()) for name, write in ORIGINALS.items()}
    failures: list[str] = []
    for name, original, write, threshold in _variants():
        frame = _decode(write())
        rows.append((name, original, frame, threshold))
    for group, base, others in _bundled():
        originals[group] = _decode(Path(pydicom.data.get_testdata_file(base)).read_bytes())  # type: ignore[arg-type]
        for other in others:
            data = Path(pydicom.data.get_testdata_file(other)).read_bytes()  # type: ignore[arg-type]
            rows.append((f"{group} (bundled) {other}", group, _decode(data), LOSSLESS_MIN))

    for name, original, frame, threshold in rows:
        reference = originals[original]
        if frame.shape != reference.shape:
            failures.append(f"{name}: shape {frame.shape} != {reference.shape}")
        elif threshold == LOSSLESS_MIN and int(np.abs(frame.astype(int) - reference).max()) > 1:
            failures.append(
                f"{name}: decoded pixels differ by up to {int(np.abs(frame.astype(int) - reference).max())}"
            )

    # Control: the MONOCHROME1 file's stored values shown without inversion (what a decoder that
    # ignores MONOCHROME1 would index): the encoders must tell it apart, or the check proves nothing.
    control = 255 - originals["grey12"]

    settings = Settings(data_dir=tmp_path / "data", runtime=RuntimeSettings(device="cpu", dtype="float32"))
    frames: dict[str, NDArray[np.uint8]] = {_key(f): f for f in originals.values()}
    frames.update({_key(f): f for _, original, f, _ in rows if f.shape == originals[original].shape})
    frames[_key(control)] = control
    keys = list(frames)
    names = [spec.name for spec in list_specs()]
    cosines: dict[str, dict[str, float]] = {}
    for encoder_name in names:
        spec = _spec(encoder_name)
        weights = None if spec.family is EncoderFamily.BUILTIN else "random"  # the built-in takes none
        encoder: Encoder = load_encoder(spec, settings, weights=weights)
        vectors = encoder.embed_batch(np.stack([encoder.preprocess(frames[k]) for k in keys]))
        by_key = dict(zip(keys, vectors, strict=True))
        cosines[encoder_name] = {CONTROL: float(by_key[_key(originals["grey12"])] @ by_key[_key(control)])}
        for name, original, frame, _ in rows:
            if frame.shape == originals[original].shape:
                cosines[encoder_name][name] = float(by_key[_key(originals[original])] @ by_key[_key(frame)])
        del encoder

    header = f"{'variant':<92} " + " ".join(f"{n[:9]:>9}" for n in names)
    lines = [header]
    for name, _, _frame, threshold in [(CONTROL, "grey12", control, 0.0), *rows]:
        values = [cosines[n].get(name) for n in names]
        cells = " ".join(f"{v:9.5f}" if v is not None else f"{'-':>9}" for v in values)
        lines.append(f"{name:<92} {cells}")
        for encoder_name, value in zip(names, values, strict=True):
            if threshold and value is not None and value < threshold:
                failures.append(f"{name} x {encoder_name}: cosine {value:.5f} < {threshold}")
    written = {
        uid.name
        for uid in (
            *NATIVE,
            *LOSSLESS_COMPRESSED,
            JPEGLossless,
            JPEGLosslessSV1,
            JPEG2000,
            JPEGLSNearLossless,
        )
    }
    written.add(ExplicitVRLittleEndian.name)
    for uid in AllTransferSyntaxes:
        try:
            decodable = get_decoder(uid).is_available
        except NotImplementedError:
            decodable = False
        if decodable and uid.name not in written:
            lines.append(f"NOT WRITTEN: {uid.name}: {NOT_WRITTEN.get(uid.name, 'no encoder here')}")
            if uid.name not in NOT_WRITTEN:
                failures.append(f"{uid.name} is decodable but neither written nor explained")
    table = "\n".join(lines)
    print("\n" + table)

    # A control every encoder confuses with the original would make the equivalence vacuous.
    confused = [n for n in names if cosines[n][CONTROL] >= LOSSLESS_MIN]
    if confused:
        failures.append(f"control not told apart (cosine >= {LOSSLESS_MIN}) by: {', '.join(confused)}")
    assert not failures, "\n".join(failures) + "\n\n" + table
