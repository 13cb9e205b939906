"""Readers: DICOM windowing and colour, compressed syntaxes, PNG/JPEG, a hostile corpus, PHI."""

from __future__ import annotations

import os
import struct
import tracemalloc
import zlib
from io import BytesIO
from typing import Any

import numpy as np
import pydicom.data
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    UID,
    BasicTextSRStorage,
    ComputedRadiographyImageStorage,
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    MRImageStorage,
    RLELossless,
    RTStructureSetStorage,
    UltrasoundImageStorage,
    UltrasoundMultiFrameImageStorage,
    generate_uid,
)

from core.errors import BadInput, DecodeError, TooLarge, UnsupportedFormat
from core.payload import keyed_hash
from ingest.readers import DecodedObject, DecodeLimits, decode_object
from ingest.readers.dicom import decode_dicom
from ingest.readers.raster import decode_raster

# Hostile inputs make pydicom warn (invalid VRs, padding); the tests assert on the typed errors.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

HASH_KEY = b"test-hash-key"
LIMITS = DecodeLimits()
CANARIES = {
    "PatientName": "ZZCANARY^PATIENT",
    "PatientID": "CANARY-123",
    "PatientBirthDate": "19010203",
    "AccessionNumber": "CANARYACC77",
    "InstitutionName": "ZZCANARY HOSPITAL",
    "ReferringPhysicianName": "ZZCANARY^DOCTOR",
    "PatientAddress": "1 Canary Wharf ZZ",
    "ImageComments": "canary free text ZZQX",
}


# --------------------------------------------------------------------------- builders


def make_dataset(
    arr: np.ndarray,
    *,
    sop_class: str = CTImageStorage,
    modality: str = "CT",
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    **tags: Any,
) -> Dataset:
    """A minimal but valid image dataset with file meta; ``tags`` are set last (override)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = UID(sop_class)
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = modality
    if bits_stored is None:
        bits_stored = 8 if arr.dtype.itemsize == 1 else 16
    ds.set_pixel_data(arr, photometric, bits_stored)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for name, value in tags.items():
        setattr(ds, name, value)
    return ds


def to_bytes(ds: Dataset, **kwargs: Any) -> bytes:
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True, **kwargs)
    return buf.getvalue()


def decode(data: bytes, key: str = "obj", limits: DecodeLimits = LIMITS) -> DecodedObject:
    return decode_object(data, key, limits=limits, hash_key=HASH_KEY)


def png_bytes(image: Image.Image) -> bytes:
    buf = BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(image: Image.Image, quality: int = 95) -> bytes:
    buf = BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def ct_hu_image() -> np.ndarray:
    """64×64 HU: air (-1000) left, soft tissue (40) middle, bone (1000) right."""
    hu = np.full((64, 64), -1000, dtype=np.int16)
    hu[:, 20:44] = 40
    hu[:, 44:] = 1000
    return hu


def ct_dataset() -> Dataset:
    # 12-bit signed storage with intercept -1024: stored = HU + 1024.
    stored = (ct_hu_image() + 1024).astype(np.int16)
    return make_dataset(
        stored,
        bits_stored=12,
        RescaleSlope=1,
        RescaleIntercept=-1024,
        WindowCenter=[40, 300],  # multi-valued: the first window is used
        WindowWidth=[400, 1500],
        BodyPartExamined="CHEST",
    )


def gradient(rows: int = 64, cols: int = 64, top: int = 4000, dtype: Any = np.uint16) -> np.ndarray:
    return np.linspace(0, top, rows * cols).reshape(rows, cols).astype(dtype)


def chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def crafted_png(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares width × height grey pixels with a tiny IDAT (no big allocation)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


# --------------------------------------------------------------------------- DICOM: pixel pipeline


def test_ct_rescale_and_first_window() -> None:
    obj = decode(to_bytes(ct_dataset()), "ct.dcm")
    (frame,) = obj.frames
    assert frame.dtype == np.uint8 and frame.shape == (64, 64)
    assert obj.frame_indices == [0]
    # Window 40/400 on HU: air below the window → 0, bone above → 255, 40 HU at the centre.
    assert frame[0, 0] == 0
    assert frame[0, 63] == 255
    assert abs(int(frame[0, 30]) - 128) <= 2
    assert obj.labels == {"modality": "CT", "anatomy": "chest"}
    assert obj.meta["rows"] == 64 and obj.meta["cols"] == 64 and obj.meta["n_frames"] == 1


def test_mr_unsigned_16bit_without_window_is_min_max() -> None:
    arr = gradient(top=4000) + 100
    obj = decode(to_bytes(make_dataset(arr, sop_class=MRImageStorage, modality="MR")))
    (frame,) = obj.frames
    assert frame.min() == 0 and frame.max() == 255
    assert frame[0, 0] == 0 and frame[-1, -1] == 255
    assert np.all(np.diff(frame.astype(int).ravel()) >= 0)  # monotone gradient survives


def test_monochrome1_is_inverted() -> None:
    arr = np.zeros((32, 32), dtype=np.uint16)
    arr[:, 16:] = 4000  # high stored value must display dark
    ds = make_dataset(
        arr, sop_class=ComputedRadiographyImageStorage, modality="CR", photometric="MONOCHROME1"
    )
    (frame,) = decode(to_bytes(ds)).frames
    assert frame[0, 31] == 0
    assert frame[0, 0] == 255


def test_monochrome1_with_window_is_inverted_after_windowing() -> None:
    arr = np.zeros((32, 32), dtype=np.uint16)
    arr[:, 16:] = 4000
    ds = make_dataset(
        arr,
        sop_class=ComputedRadiographyImageStorage,
        modality="CR",
        photometric="MONOCHROME1",
        bits_stored=12,
        WindowCenter=2000,
        WindowWidth=4000,
    )
    (frame,) = decode(to_bytes(ds)).frames
    assert frame[0, 31] <= 2 and frame[0, 0] >= 253


def test_rgb_ultrasound() -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(48, 40, 3), dtype=np.uint8)
    ds = make_dataset(rgb, sop_class=UltrasoundImageStorage, modality="US", photometric="RGB")
    obj = decode(to_bytes(ds))
    (frame,) = obj.frames
    assert frame.shape == (48, 40, 3) and frame.dtype == np.uint8
    np.testing.assert_array_equal(frame, rgb)


def test_multiframe_is_sampled_evenly() -> None:
    frames = np.zeros((10, 32, 64), dtype=np.uint8)
    for i in range(10):
        frames[i, :, i * 6 : i * 6 + 4] = 200  # the bright bar's column says which frame it is
    ds = make_dataset(
        frames,
        sop_class=UltrasoundMultiFrameImageStorage,
        modality="US",
        NumberOfFrames=10,
    )
    obj = decode(to_bytes(ds), limits=DecodeLimits(max_frames=4))
    assert obj.frame_indices == [0, 3, 6, 9]
    assert obj.meta["n_frames"] == 10
    assert len(obj.frames) == 4
    for index, frame in zip(obj.frame_indices, obj.frames, strict=True):
        assert int(np.argmax(frame[0])) == index * 6


def test_multiframe_below_cap_keeps_every_frame() -> None:
    frames = np.stack([gradient(16, 16, 200, np.uint8)] * 3)
    ds = make_dataset(frames, sop_class=UltrasoundMultiFrameImageStorage, modality="US", NumberOfFrames=3)
    obj = decode(to_bytes(ds))
    assert obj.frame_indices == [0, 1, 2]


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless], ids=lambda u: u.name)
def test_lossless_compressed_matches_native(syntax: UID) -> None:
    native = ct_dataset()
    expected = decode(to_bytes(native)).frames[0]
    compressed = ct_dataset()
    compressed.compress(syntax)
    assert compressed.file_meta.TransferSyntaxUID == syntax
    obj = decode(to_bytes(compressed))
    np.testing.assert_array_equal(obj.frames[0], expected)


def test_jpeg2000_lossless_mr_16bit() -> None:
    ds = make_dataset(gradient(), sop_class=MRImageStorage, modality="MR")
    ds.compress(JPEG2000Lossless)
    (frame,) = decode(to_bytes(ds)).frames
    assert frame[0, 0] == 0 and frame[-1, -1] == 255


def test_jpeg_baseline_8bit() -> None:
    grey = gradient(64, 64, 255, np.uint8)
    ds = make_dataset(grey, sop_class=UltrasoundImageStorage, modality="US")
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([jpeg_bytes(Image.fromarray(grey))])
    ds["PixelData"].VR = "OB"
    (frame,) = decode(to_bytes(ds)).frames
    assert frame.shape == (64, 64)
    assert np.abs(frame.astype(int) - grey.astype(int)).mean() < 4


def test_palette_colour() -> None:
    arr = np.arange(64, dtype=np.uint8).reshape(8, 8)
    ds = make_dataset(arr, sop_class=UltrasoundImageStorage, modality="US", photometric="PALETTE COLOR")
    lut = np.arange(256, dtype=np.uint16) * 257
    for colour in ("Red", "Green", "Blue"):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, 16])
        setattr(ds, f"{colour}PaletteColorLookupTableData", lut.tobytes())
    (frame,) = decode(to_bytes(ds)).frames
    assert frame.shape == (8, 8, 3) and frame.dtype == np.uint8
    assert frame[7, 7, 0] == 63


def test_dicom_meta_hashes_and_burned_in() -> None:
    ds = ct_dataset()
    ds.PatientID = "P-1"
    ds.BurnedInAnnotation = "YES"
    obj = decode(to_bytes(ds))
    assert obj.meta["patient_hash"] == keyed_hash(HASH_KEY, "P-1")
    assert obj.meta["study_hash"] == keyed_hash(HASH_KEY, ds.StudyInstanceUID)
    assert obj.meta["series_hash"] == keyed_hash(HASH_KEY, ds.SeriesInstanceUID)
    assert obj.meta["instance_hash"] == keyed_hash(HASH_KEY, ds.SOPInstanceUID)
    assert obj.meta["burned_in_annotation"] is True
    plain = decode(to_bytes(ct_dataset()))
    assert "patient_hash" not in plain.meta
    assert plain.meta["burned_in_annotation"] is None


# --------------------------------------------------------------------------- PNG / JPEG


def test_png_8bit_grey() -> None:
    grey = gradient(40, 50, 255, np.uint8)
    obj = decode(png_bytes(Image.fromarray(grey)), "a.png")
    np.testing.assert_array_equal(obj.frames[0], grey)
    assert obj.labels == {} and obj.meta == {"rows": 40, "cols": 50, "n_frames": 1}
    assert obj.frame_indices == [0]


def test_png_16bit_grey_is_min_max_scaled() -> None:
    arr = gradient(40, 50, 60000) + 1000
    (frame,) = decode(png_bytes(Image.fromarray(arr))).frames
    assert frame.dtype == np.uint8 and frame.shape == (40, 50)
    assert frame[0, 0] == 0 and frame[-1, -1] == 255


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "LA"])
def test_png_colour_modes(mode: str) -> None:
    rng = np.random.default_rng(1)
    rgb = Image.fromarray(rng.integers(0, 256, size=(20, 30, 3), dtype=np.uint8))
    image = rgb.convert(mode)
    (frame,) = decode(png_bytes(image)).frames
    assert frame.dtype == np.uint8
    if mode == "LA":
        assert frame.shape == (20, 30)
    else:
        assert frame.shape == (20, 30, 3)
    if mode in ("RGB", "RGBA"):
        np.testing.assert_array_equal(frame, np.asarray(rgb))


def test_jpeg() -> None:
    rgb = np.zeros((32, 32, 3), dtype=np.uint8)
    rgb[..., 0] = 200
    (frame,) = decode(jpeg_bytes(Image.fromarray(rgb)), "x.jpg").frames
    assert frame.shape == (32, 32, 3)
    assert abs(int(frame[..., 0].mean()) - 200) < 5


def test_extension_is_ignored() -> None:
    grey = gradient(8, 8, 255, np.uint8)
    obj = decode(png_bytes(Image.fromarray(grey)), "looks_like.dcm")
    assert obj.frames[0].shape == (8, 8)


# --------------------------------------------------------------------------- hostile corpus


def assert_bad(data: bytes, expected: type[BadInput] = BadInput, key: str = "bad", **kw: Any) -> BadInput:
    with pytest.raises(BadInput) as info:
        decode(data, key, **kw)
    assert isinstance(info.value, expected), repr(info.value)
    assert info.value.key == key
    return info.value


def test_empty_and_text() -> None:
    error = assert_bad(b"", UnsupportedFormat)
    assert "unrecognised file format" in error.reason
    assert_bad(b"this is just a text file\n" * 20, UnsupportedFormat, key="notes.dcm")


@pytest.mark.parametrize("key", ["manifest.csv", "labels/Manifest.JSONL"])
def test_a_label_file_among_the_images_says_how_labels_go_in(key: str) -> None:
    error = assert_bad(b"key,modality\na.dcm,CT\n", UnsupportedFormat, key=key)
    assert error.reason == (
        "unrecognised file format (labels in CSV or JSONL go in as the ingest's manifest: --manifest)"
    )
    # other names get no hint
    assert "manifest" not in assert_bad(b"plain text", UnsupportedFormat, key="notes.txt").reason


@pytest.mark.parametrize("fraction", [0.10, 0.50, 0.99])
def test_truncated_dicom(fraction: float) -> None:
    data = to_bytes(ct_dataset())
    assert_bad(data[: int(len(data) * fraction)], DecodeError)


@pytest.mark.parametrize("fraction", [0.10, 0.50, 0.99])
def test_truncated_compressed_dicom(fraction: float) -> None:
    ds = ct_dataset()
    ds.compress(JPEG2000Lossless)
    data = to_bytes(ds)
    assert_bad(data[: int(len(data) * fraction)])


def test_preamble_with_garbage() -> None:
    rng = np.random.default_rng(2)
    for seed in range(20):
        garbage = np.random.default_rng(seed).integers(0, 256, 2000, dtype=np.uint8).tobytes()
        assert_bad(b"\x00" * 128 + b"DICM" + garbage)
    assert_bad(b"MZ" + rng.integers(0, 256, 126, dtype=np.uint8).tobytes() + b"DICM")


def test_huge_declared_size_is_rejected_without_allocating() -> None:
    ds = make_dataset(np.zeros((4, 4), dtype=np.uint16))
    ds.Rows = 65535
    ds.Columns = 65535
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds.PixelData = encapsulate([b"\x00" * 16])
    ds["PixelData"].VR = "OB"
    data = to_bytes(ds)
    tracemalloc.start()
    try:
        assert_bad(data, TooLarge)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20 * 1024**2


def test_too_many_frames_in_total() -> None:
    ds = make_dataset(np.zeros((4, 4), dtype=np.uint16))
    ds.Rows = 4096
    ds.Columns = 4096
    ds.NumberOfFrames = 10000
    assert_bad(to_bytes(ds), TooLarge)


def test_number_of_frames_zero() -> None:
    ds = make_dataset(np.zeros((4, 4), dtype=np.uint8), NumberOfFrames=0)
    assert_bad(to_bytes(ds), DecodeError)


def test_zero_rows() -> None:
    ds = make_dataset(np.zeros((4, 4), dtype=np.uint8))
    ds.Rows = 0
    assert_bad(to_bytes(ds), DecodeError)


def test_short_native_pixel_data() -> None:
    ds = make_dataset(np.zeros((4, 4), dtype=np.uint16))
    ds.Rows = 400
    assert_bad(to_bytes(ds), DecodeError)


@pytest.mark.parametrize(
    ("sop_class", "name"),
    [(RTStructureSetStorage, "RT Structure Set Storage"), (BasicTextSRStorage, "Basic Text SR Storage")],
)
def test_non_image_sop_class(sop_class: str, name: str) -> None:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = UID(sop_class)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "RTSTRUCT" if "RT" in name else "SR"
    error = assert_bad(to_bytes(ds), UnsupportedFormat)
    assert error.reason == f"not an image (SOP class {name})"


def test_transfer_syntax_without_decoder() -> None:
    ds = ct_dataset()
    ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.4.100")  # MPEG2
    ds.PixelData = encapsulate([b"\x00" * 16])
    ds["PixelData"].VR = "OB"
    error = assert_bad(to_bytes(ds), UnsupportedFormat)
    assert "MPEG2" in error.reason


def test_png_bomb_over_pillow_hard_limit() -> None:
    assert_bad(crafted_png(30000, 30000), TooLarge)
    assert_bad(crafted_png(30000, 30000), TooLarge, limits=DecodeLimits(max_pixels_per_frame=10**10))


def test_png_bomb_warning_becomes_error() -> None:
    # 10000² is above Pillow's warning threshold (~89 Mpx) but below its hard error.
    error = assert_bad(crafted_png(10000, 10000), TooLarge, limits=DecodeLimits(max_pixels_per_frame=10**9))
    assert "bomb" in error.reason


def test_png_over_configured_limit() -> None:
    data = png_bytes(Image.fromarray(np.zeros((100, 100), dtype=np.uint8)))
    assert_bad(data, TooLarge, limits=DecodeLimits(max_pixels_per_frame=5000))


def test_truncated_png() -> None:
    data = png_bytes(Image.fromarray(gradient(64, 64, 255, np.uint8)))
    assert_bad(data[: len(data) // 2], DecodeError)
    assert_bad(crafted_png(64, 64), DecodeError)  # IDAT too short for the declared size


def test_jpeg_with_corrupted_markers() -> None:
    data = bytearray(jpeg_bytes(Image.fromarray(gradient(64, 64, 255, np.uint8))))
    sof = data.index(b"\xff\xc0")
    broken = bytes(data[:sof] + b"\xff\x01" + b"\x00" * 30 + data[sof + 32 :])
    assert_bad(broken, DecodeError)
    sos = data.index(b"\xff\xda")
    assert_bad(bytes(data[: sos + 4]), DecodeError)
    assert_bad(bytes(data[:4]) + b"\xff" * 200, DecodeError)


def test_typed_errors_never_escape_as_other_exceptions() -> None:
    valid = to_bytes(ct_dataset())
    rng = np.random.default_rng(3)
    for _ in range(100):
        data = bytearray(valid)
        positions = rng.integers(132, len(data), size=8)
        data_arr = np.frombuffer(bytes(data), dtype=np.uint8).copy()
        data_arr[positions] = rng.integers(0, 256, size=8)
        try:
            obj = decode(data_arr.tobytes())
        except BadInput:
            continue
        assert all(f.dtype == np.uint8 for f in obj.frames)


def test_readers_can_be_called_directly() -> None:
    with pytest.raises(DecodeError):
        decode_dicom(b"not dicom", "k", limits=LIMITS, hash_key=HASH_KEY)
    with pytest.raises(DecodeError):
        decode_raster(b"not an image", "k", limits=LIMITS)


# --------------------------------------------------------------------------- pydicom's test files


def test_pydicom_testdata_decodes_or_fails_typed(capsys: pytest.CaptureFixture[str]) -> None:
    paths = [p for p in pydicom.data.get_testdata_files() if os.path.isfile(p)]
    assert paths, "pydicom ships test files"
    decoded = typed = 0
    limits = DecodeLimits(max_frames=4)
    for path in paths:
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except OSError:
            continue  # not available locally: skip this file only
        try:
            obj = decode(data, os.path.basename(path), limits=limits)
        except BadInput:
            typed += 1
            continue
        assert obj.frames, path
        assert all(f.dtype == np.uint8 and f.ndim in (2, 3) for f in obj.frames), path
        assert len(obj.frames) == len(obj.frame_indices)
        decoded += 1
    with capsys.disabled():
        print(
            f"\npydicom_testdata: files={decoded + typed} decoded={decoded} typed_errors={typed} unexpected=0"
        )
    assert decoded >= 50


# --------------------------------------------------------------------------- PHI


def phi_dataset(**overrides: Any) -> Dataset:
    ds = ct_dataset()
    for name, value in CANARIES.items():
        setattr(ds, name, value)
    for name, value in overrides.items():
        setattr(ds, name, value)
    return ds


def assert_no_canary(text: str) -> None:
    for value in CANARIES.values():
        assert value not in text
        for part in value.split("^"):
            assert part not in text


def test_phi_never_in_labels_meta_or_errors() -> None:
    data = to_bytes(phi_dataset())
    assert b"ZZCANARY^PATIENT" in data
    obj = decode(data)
    assert_no_canary(repr(obj.labels) + repr(obj.meta))

    broken: list[bytes] = [
        data[: len(data) // 2],
        to_bytes(phi_dataset(NumberOfFrames=0)),
        to_bytes(phi_dataset(SOPClassUID="1.2.3.4.5.6.7")),
        to_bytes(phi_dataset(Rows=65535, Columns=65535)),
    ]
    bad_class = phi_dataset()
    bad_class.SOPClassUID = CANARIES["PatientID"]
    broken.append(to_bytes(bad_class))
    bad_syntax = phi_dataset()
    bad_syntax.file_meta.TransferSyntaxUID = UID(CANARIES["PatientID"])
    buf = BytesIO()
    bad_syntax.preamble = b"\x00" * 128
    bad_syntax.save_as(buf, implicit_vr=False, little_endian=True, force_encoding=True)
    assert buf.getvalue()[128:132] == b"DICM"
    broken.append(buf.getvalue())
    for item in broken:
        with pytest.raises(BadInput) as info:
            decode(item)
        assert_no_canary(str(info.value) + repr(info.value) + info.value.reason)
