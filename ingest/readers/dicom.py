"""DICOM reader: bytes of one DICOM Part 10 file → display-ready 8-bit frames plus safe metadata.

Windowing convention (grey images), applied per frame in this order:

1. modality LUT: Rescale Slope/Intercept or the Modality LUT Sequence (stored values → e.g. HU);
2. VOI: the VOI LUT Sequence if present, else the first Window Center/Width (LINEAR, LINEAR_EXACT
   or SIGMOID); if neither is present (or the window is unusable), min–max over the frame;
3. MONOCHROME1 inversion (high values display dark);
4. linear scaling of the VOI output range to uint8.

Colour images (RGB, YBR_* decoded to RGB by pydicom, PALETTE COLOR through its LUT) become
(H, W, 3) uint8. Enhanced multi-frame objects take rescale and window from their shared/per-frame
functional groups.

Everything is checked from the header before a pixel is decoded: SOP class (images only),
presence of Pixel Data, declared size against `DecodeLimits` and `MAX_TOTAL_BYTES`, transfer
syntax against the installed decoders. Long multi-frame objects are sampled evenly down to
``limits.max_frames`` frames and only those frames are decoded. Error reasons never quote header
values: only the object key, tag names, standard UID names and exception type names.
"""

from __future__ import annotations

import logging
import math
import time
from io import BytesIO
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydicom import config as pydicom_config
from pydicom import dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut, apply_voi, apply_windowing
from pydicom.pixels.utils import pixel_array
from pydicom.uid import UID

from core.errors import BadInput, DecodeError, DecodeTimeout, TooLarge, UnsupportedFormat
from core.frame import Frame
from core.payload import keyed_hash
from ingest.readers.base import DecodedObject, DecodeLimits

__all__ = ["IMAGE_SOP_CLASSES", "MAX_TOTAL_BYTES", "decode_dicom"]

# Declared size of all frames together (Rows × Columns × frames × samples × bytes per sample).
# Encapsulated pixel data is not checked against the declared size by pydicom, so a small file
# can claim 65535² × 10⁴ frames; this rejects it before any decoding.
MAX_TOTAL_BYTES = 2 * 1024**3

# Storage SOP classes whose pixel data is a viewable image. Anything else with a DICOM preamble
# (RT Structure Set/Plan/Dose, SR, waveforms, presentation states, segmentations, ...) is
# rejected as "not an image".
IMAGE_SOP_CLASSES: frozenset[str] = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.1",  # Computed Radiography Image Storage
        "1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray Image Storage - For Presentation
        "1.2.840.10008.5.1.4.1.1.1.1.1",  # Digital X-Ray Image Storage - For Processing
        "1.2.840.10008.5.1.4.1.1.1.2",  # Digital Mammography X-Ray - For Presentation
        "1.2.840.10008.5.1.4.1.1.1.2.1",  # Digital Mammography X-Ray - For Processing
        "1.2.840.10008.5.1.4.1.1.1.3",  # Digital Intra-Oral X-Ray - For Presentation
        "1.2.840.10008.5.1.4.1.1.1.3.1",  # Digital Intra-Oral X-Ray - For Processing
        "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
        "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT Image Storage
        "1.2.840.10008.5.1.4.1.1.2.2",  # Legacy Converted Enhanced CT Image Storage
        "1.2.840.10008.5.1.4.1.1.3",  # Ultrasound Multi-frame Image Storage (Retired)
        "1.2.840.10008.5.1.4.1.1.3.1",  # Ultrasound Multi-frame Image Storage
        "1.2.840.10008.5.1.4.1.1.4",  # MR Image Storage
        "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR Image Storage
        "1.2.840.10008.5.1.4.1.1.4.3",  # Enhanced MR Color Image Storage
        "1.2.840.10008.5.1.4.1.1.4.4",  # Legacy Converted Enhanced MR Image Storage
        "1.2.840.10008.5.1.4.1.1.5",  # Nuclear Medicine Image Storage (Retired)
        "1.2.840.10008.5.1.4.1.1.6",  # Ultrasound Image Storage (Retired)
        "1.2.840.10008.5.1.4.1.1.6.1",  # Ultrasound Image Storage
        "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image Storage
        "1.2.840.10008.5.1.4.1.1.7.1",  # Multi-frame Single Bit Secondary Capture
        "1.2.840.10008.5.1.4.1.1.7.2",  # Multi-frame Grayscale Byte Secondary Capture
        "1.2.840.10008.5.1.4.1.1.7.3",  # Multi-frame Grayscale Word Secondary Capture
        "1.2.840.10008.5.1.4.1.1.7.4",  # Multi-frame True Color Secondary Capture
        "1.2.840.10008.5.1.4.1.1.12.1",  # X-Ray Angiographic Image Storage
        "1.2.840.10008.5.1.4.1.1.12.1.1",  # Enhanced XA Image Storage
        "1.2.840.10008.5.1.4.1.1.12.2",  # X-Ray Radiofluoroscopic Image Storage
        "1.2.840.10008.5.1.4.1.1.12.2.1",  # Enhanced XRF Image Storage
        "1.2.840.10008.5.1.4.1.1.13.1.3",  # Breast Tomosynthesis Image Storage
        "1.2.840.10008.5.1.4.1.1.13.1.4",  # Breast Projection X-Ray - For Presentation
        "1.2.840.10008.5.1.4.1.1.13.1.5",  # Breast Projection X-Ray - For Processing
        "1.2.840.10008.5.1.4.1.1.13.1.1",  # X-Ray 3D Angiographic Image Storage
        "1.2.840.10008.5.1.4.1.1.13.1.2",  # X-Ray 3D Craniofacial Image Storage
        "1.2.840.10008.5.1.4.1.1.20",  # Nuclear Medicine Image Storage
        "1.2.840.10008.5.1.4.1.1.128",  # Positron Emission Tomography Image Storage
        "1.2.840.10008.5.1.4.1.1.128.1",  # Legacy Converted Enhanced PET Image Storage
        "1.2.840.10008.5.1.4.1.1.130",  # Enhanced PET Image Storage
        "1.2.840.10008.5.1.4.1.1.481.1",  # RT Image Storage (portal images)
        "1.2.840.10008.5.1.4.1.1.6.2",  # Enhanced US Volume Storage
    }
)


# Secondary Capture Image Storage and its multi-frame variants (…1.7, …1.7.1–4): screenshots and
# scanned documents, where burned-in text is the rule rather than the exception.
_SECONDARY_CAPTURE_ROOT = "1.2.840.10008.5.1.4.1.1.7"


def _silence_pydicom() -> None:
    """pydicom's validation warnings and log records quote raw header values (patient names, ids):
    they must never reach a log. Reading stays strict where it matters: every failure becomes a
    typed `BadInput` without values."""
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
    logging.getLogger("pydicom").setLevel(logging.CRITICAL + 1)


_silence_pydicom()

_GREY = frozenset({"MONOCHROME1", "MONOCHROME2"})
_COLOUR = frozenset({"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420"})
_KNOWN_PHOTOMETRIC = _GREY | _COLOUR | {"PALETTE COLOR"}
_BITS_ALLOCATED = frozenset({1, 8, 16, 32})

# Tags a per-frame view of an enhanced multi-frame object needs besides the functional groups.
_VIEW_BASE = (
    "PhotometricInterpretation",
    "SamplesPerPixel",
    "BitsAllocated",
    "BitsStored",
    "PixelRepresentation",
    "RescaleSlope",
    "RescaleIntercept",
    "RescaleType",
    "ModalityLUTSequence",
    "WindowCenter",
    "WindowWidth",
    "VOILUTFunction",
    "VOILUTSequence",
)
_GROUP_MACROS = (
    ("PixelValueTransformationSequence", ("RescaleSlope", "RescaleIntercept", "RescaleType")),
    ("FrameVOILUTSequence", ("WindowCenter", "WindowWidth", "VOILUTFunction")),
)


def _uid_name(uid: Any) -> str:
    """A standard UID's registered name; never the raw value of a private or bogus UID."""
    try:
        value = UID(str(uid).strip())
    except Exception:
        return "<unregistered>"
    return value.name if value.keyword else "<unregistered>"


def _int_attr(ds: Dataset, keyword: str, key: str, default: int | None = None) -> int:
    """An integer attribute; a missing (without default) or malformed value is a `DecodeError`."""
    value = ds.get(keyword, default)
    if value is None or value == "":
        if default is not None:
            return default
        raise DecodeError(key, f"missing {keyword}")
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise DecodeError(key, f"invalid {keyword}") from None
    return number


def _clean_str(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _sample_indices(n_frames: int, max_frames: int) -> list[int]:
    """All frames, or ``max_frames`` frames spread evenly over the object (first and last kept)."""
    if n_frames <= max_frames:
        return list(range(n_frames))
    picks = np.linspace(0, n_frames - 1, num=max(1, max_frames)).round().astype(int)
    return sorted({int(i) for i in picks})


def _check_header(ds: Dataset, key: str, limits: DecodeLimits) -> tuple[int, int, int, int, int]:
    """Validate SOP class, Pixel Data, geometry and transfer syntax; return
    (rows, cols, n_frames, samples, bits_allocated)."""
    sop = ds.get("SOPClassUID") or ds.file_meta.get("MediaStorageSOPClassUID")
    if not sop:
        raise UnsupportedFormat(key, "not an image (no SOP class)")
    if str(sop).strip() not in IMAGE_SOP_CLASSES:
        raise UnsupportedFormat(key, f"not an image (SOP class {_uid_name(sop)})")
    if "PixelData" not in ds:
        raise DecodeError(key, "no pixel data (empty or truncated file)")

    rows = _int_attr(ds, "Rows", key)
    cols = _int_attr(ds, "Columns", key)
    if rows <= 0 or cols <= 0:
        raise DecodeError(key, "Rows and Columns must be positive")
    n_frames = _int_attr(ds, "NumberOfFrames", key, default=1)
    if n_frames < 1:
        raise DecodeError(key, "NumberOfFrames must be at least 1")
    samples = _int_attr(ds, "SamplesPerPixel", key, default=1)
    if samples not in (1, 3):
        raise UnsupportedFormat(key, "SamplesPerPixel must be 1 or 3")
    bits = _int_attr(ds, "BitsAllocated", key)
    if bits not in _BITS_ALLOCATED:
        raise UnsupportedFormat(key, "unsupported BitsAllocated")

    if rows * cols > limits.max_pixels_per_frame:
        raise TooLarge(key, f"frame {rows}x{cols} exceeds the limit of {limits.max_pixels_per_frame} pixels")
    total_pixels = rows * cols * n_frames * samples
    if total_pixels > limits.max_total_pixels:
        raise TooLarge(
            key, f"{n_frames} frames of {rows}x{cols} exceed the limit of {limits.max_total_pixels} pixels"
        )
    if total_pixels * math.ceil(bits / 8) > MAX_TOTAL_BYTES:
        raise TooLarge(key, f"declared pixel data exceeds {MAX_TOTAL_BYTES} bytes")

    photometric = _clean_str(ds.get("PhotometricInterpretation"))
    if photometric not in _KNOWN_PHOTOMETRIC:
        raise UnsupportedFormat(key, "unsupported or missing PhotometricInterpretation")
    if (samples == 3) != (photometric in _COLOUR):
        raise DecodeError(key, "PhotometricInterpretation does not match SamplesPerPixel")

    tsyntax = ds.file_meta.get("TransferSyntaxUID")
    if not tsyntax:
        raise DecodeError(key, "file meta has no TransferSyntaxUID")
    try:
        decoder = get_decoder(UID(str(tsyntax)))
    except NotImplementedError:
        raise UnsupportedFormat(key, f"transfer syntax {_uid_name(tsyntax)} is not supported") from None
    if not decoder.is_available:
        raise UnsupportedFormat(key, f"no decoder installed for transfer syntax {_uid_name(tsyntax)}")
    return rows, cols, n_frames, samples, bits


def _frame_view(ds: Dataset, index: int) -> Dataset:
    """The dataset as seen by frame ``index``: for enhanced multi-frame objects, a small dataset
    with rescale/window from the shared and per-frame functional groups; otherwise ``ds``."""
    shared = ds.get("SharedFunctionalGroupsSequence")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    groups: list[Dataset] = []
    if shared:
        groups.append(shared[0])
    if per_frame and index < len(per_frame):
        groups.append(per_frame[index])
    overrides: list[DataElement] = []
    for group in groups:
        for macro, keywords in _GROUP_MACROS:
            items = group.get(macro)
            if items:
                overrides.extend(items[0][kw] for kw in keywords if kw in items[0])
    if not overrides:
        return ds
    view = Dataset()
    for keyword in _VIEW_BASE:
        if keyword in ds:
            view.add(ds[keyword])
    for element in overrides:
        view.add(element)
    return view


def _scale(arr: NDArray[Any], lo: float, hi: float) -> NDArray[np.uint8]:
    """Map [lo, hi] linearly onto [0, 255] (clipping outside), NaN → 0."""
    values = np.nan_to_num(arr.astype(np.float64, copy=False), nan=lo, posinf=hi, neginf=lo)
    if not hi > lo:
        return np.zeros(values.shape, dtype=np.uint8)
    out = (values - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _minmax(arr: NDArray[Any]) -> NDArray[np.uint8]:
    finite = arr[np.isfinite(arr)] if arr.dtype.kind == "f" else arr
    if finite.size == 0:
        return np.zeros(arr.shape, dtype=np.uint8)
    return _scale(arr, float(finite.min()), float(finite.max()))


def _window_range(view: Dataset) -> tuple[float, float]:
    """The output range of pydicom's windowing: the stored-value range through the modality LUT."""
    if view.get("ModalityLUTSequence"):
        lo, hi = 0.0, float(2 ** int(view.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    elif int(view.get("PixelRepresentation", 0)) == 0:
        lo, hi = 0.0, float(2 ** int(view.BitsStored) - 1)
    else:
        lo, hi = float(-(2 ** (int(view.BitsStored) - 1))), float(2 ** (int(view.BitsStored) - 1) - 1)
    slope = view.get("RescaleSlope")
    intercept = view.get("RescaleIntercept")
    if slope is not None and intercept is not None and not view.get("ModalityLUTSequence"):
        a, b = lo * float(slope) + float(intercept), hi * float(slope) + float(intercept)
        lo, hi = min(a, b), max(a, b)
    return lo, hi


def _first(value: Any) -> float:
    """The first of a multi-valued attribute (Window Center/Width may hold several views)."""
    if isinstance(value, MultiValue | list | tuple):
        return float(value[0])
    return float(value)


def _usable_window(view: Dataset) -> bool:
    if "WindowCenter" not in view or "WindowWidth" not in view:
        return False
    try:
        _first(view.WindowCenter)
        width = _first(view.WindowWidth)
    except (TypeError, ValueError, IndexError):
        return False
    function = str(view.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
    if function == "LINEAR":
        return width >= 1
    return function in ("LINEAR_EXACT", "SIGMOID") and width > 0


# A frame of integer stored values is mapped through a lookup table built by running the grey
# pipeline on the stored-value range once, when that range is smaller than the frame: one gather
# instead of several float64 passes (512² 12-bit CT: ~4x faster). Exact, because every step is a
# function of the stored value alone; the one data-dependent step, min–max, takes its extremes
# from the frame, and the range [min, max] of a frame holds those (a Modality LUT Sequence, which
# need not be monotonic, takes the direct path).
_LUT_MAX_ENTRIES = 1 << 16


def _grey_frame(raw: NDArray[Any], view: Dataset, monochrome1: bool) -> Frame:
    """Modality LUT → VOI LUT / window (else min–max) → MONOCHROME1 inversion → uint8."""
    if (
        raw.dtype.kind in "ui"
        and raw.dtype.itemsize <= 2
        and raw.size
        and not view.get("ModalityLUTSequence")
    ):
        lo, hi = int(raw.min()), int(raw.max())
        if hi - lo + 1 <= min(_LUT_MAX_ENTRIES, raw.size):
            domain = np.arange(lo, hi + 1, dtype=raw.dtype).reshape(1, -1)
            lut = _grey_frame_direct(domain, view, monochrome1).reshape(-1)
            out: Frame = lut[np.subtract(raw, lo, dtype=np.int32)]
            return out
    return _grey_frame_direct(raw, view, monochrome1)


def _grey_frame_direct(raw: NDArray[Any], view: Dataset, monochrome1: bool) -> Frame:
    values = apply_modality_lut(raw, view)
    voi_seq = view.get("VOILUTSequence")
    if voi_seq and "LUTDescriptor" in voi_seq[0]:
        out = apply_voi(values, view, index=0)
        lut_bits = int(voi_seq[0].LUTDescriptor[2])
        frame = _scale(out, 0.0, float(2**lut_bits - 1)) if lut_bits > 0 else _minmax(out)
    elif _usable_window(view):
        lo, hi = _window_range(view)
        frame = _scale(apply_windowing(values, view, index=0), lo, hi)
    else:
        frame = _minmax(values)
    if monochrome1:
        frame = np.subtract(255, frame, dtype=np.uint8)
    return frame


def _colour_frame(raw: NDArray[Any], ds: Dataset, photometric: str, key: str) -> Frame:
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(raw, ds)
        if rgb.dtype == np.uint8:
            return np.ascontiguousarray(rgb)
        return _scale(rgb, 0.0, 65535.0)
    if raw.dtype == np.uint8:
        return np.ascontiguousarray(raw)
    bits_stored = _int_attr(ds, "BitsStored", key, default=int(raw.dtype.itemsize * 8))
    return _scale(raw, 0.0, float(2**bits_stored - 1))


def _hashes(ds: Dataset, hash_key: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, keyword in (
        ("study_hash", "StudyInstanceUID"),
        ("series_hash", "SeriesInstanceUID"),
        ("instance_hash", "SOPInstanceUID"),
        ("patient_hash", "PatientID"),
    ):
        value = _clean_str(ds.get(keyword))
        if value is not None:
            out[name] = keyed_hash(hash_key, value)
    return out


def decode_dicom(
    data: bytes, key: str, *, limits: DecodeLimits, hash_key: bytes, deadline: float | None = None
) -> DecodedObject:
    """Decode one DICOM Part 10 file (preamble + ``DICM`` + file meta) into 8-bit frames.

    ``labels``: ``modality`` (Modality) and ``anatomy`` (BodyPartExamined, lower case) when present.
    ``meta``: ``rows``, ``cols``, ``n_frames`` (in the file, before sampling), keyed hashes of the
    Study/Series/SOP Instance UIDs and PatientID when present, and ``burned_in_annotation``
    (True for "YES", False for "NO", None when the tag is absent) and ``secondary_capture`` (the SOP
    class is a Secondary Capture one).

    Raises `UnsupportedFormat` (not an image SOP class, transfer syntax without decoder, odd
    photometric interpretation), `TooLarge` (declared size beyond ``limits``/`MAX_TOTAL_BYTES`)
    and `DecodeError` (anything else that goes wrong); no other exception escapes. With a
    ``deadline`` (a `time.monotonic` value), `DecodeTimeout` once it passes between frames.
    """
    if data[128:132] != b"DICM":
        raise DecodeError(key, "no DICOM preamble (DICM marker missing)")
    try:
        return _decode(data, key, limits, hash_key, deadline)
    except BadInput:
        raise
    except MemoryError:
        raise DecodeError(key, "out of memory while decoding") from None
    except InvalidDicomError:
        raise DecodeError(key, "invalid DICOM file") from None
    # pydicom/decoder messages may quote header values, so only the exception type is kept and
    # the original is not chained (it would reach logs through tracebacks). BaseException: Rust
    # decoders (pylibjpeg-rle via pyo3) raise PanicException, which is not an Exception.
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt | SystemExit | GeneratorExit):
            raise
        raise DecodeError(key, f"cannot read DICOM ({type(exc).__name__})") from None


def _decode(
    data: bytes, key: str, limits: DecodeLimits, hash_key: bytes, deadline: float | None
) -> DecodedObject:
    ds = dcmread(BytesIO(data), force=False)
    rows, cols, n_frames, samples, _ = _check_header(ds, key, limits)
    photometric = str(ds.PhotometricInterpretation).strip()
    indices = _sample_indices(n_frames, limits.max_frames)

    frames: list[Frame] = []
    for index in indices:
        if deadline is not None and time.monotonic() > deadline:
            raise DecodeTimeout(key, f"decoding took longer than {limits.timeout_s:g} s")
        try:
            raw = pixel_array(ds, index=index)
        except (ValueError, RuntimeError, NotImplementedError, OSError, KeyError, AttributeError) as exc:
            raise DecodeError(key, f"cannot decode frame {index} ({type(exc).__name__})") from None
        if raw.ndim == 3 and raw.shape[-1] == 1:
            raw = raw[..., 0]
        expected = (rows, cols) if samples == 1 else (rows, cols, 3)
        if raw.shape != expected:
            raise DecodeError(key, f"frame {index} has an unexpected shape")
        if samples == 3 or photometric == "PALETTE COLOR":
            frame = _colour_frame(raw, ds, photometric, key)
        else:
            frame = _grey_frame(raw, _frame_view(ds, index), photometric == "MONOCHROME1")
        frames.append(np.ascontiguousarray(frame, dtype=np.uint8))

    labels: dict[str, Any] = {}
    modality = _clean_str(ds.get("Modality"))
    if modality is not None:
        labels["modality"] = modality.upper()
    anatomy = _clean_str(ds.get("BodyPartExamined"))
    if anatomy is not None:
        labels["anatomy"] = anatomy.lower()

    burned_in = _clean_str(ds.get("BurnedInAnnotation"))
    sop = str(ds.get("SOPClassUID") or ds.file_meta.get("MediaStorageSOPClassUID") or "").strip()
    meta: dict[str, Any] = {
        "rows": rows,
        "cols": cols,
        "n_frames": n_frames,
        **_hashes(ds, hash_key),
        "burned_in_annotation": None if burned_in is None else burned_in.upper() == "YES",
        "secondary_capture": sop.startswith(_SECONDARY_CAPTURE_ROOT),
    }
    return DecodedObject(frames=frames, frame_indices=indices, labels=labels, meta=meta)
