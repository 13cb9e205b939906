"""A generated corpus of hostile files (and the valid seeds they are made from)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
    UltrasoundImageStorage,
    generate_uid,
)

RT_STRUCTURE_SET = "1.2.840.10008.5.1.4.1.1.481.3"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
MPEG2_MAIN = "1.2.840.10008.1.2.4.100"


def _dataset(sop: str = CTImageStorage, tsyntax: str = ExplicitVRLittleEndian) -> Dataset:
    sop, tsyntax = UID(sop), UID(tsyntax)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = tsyntax
    ds.SOPClassUID = sop
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CT"
    ds.PatientName = "ZZHOSTILE^PATIENT"
    ds.PatientID = "ZZHOSTILE-ID"
    return ds


def _image(ds: Dataset, rows: int = 32, cols: int = 32, frames: int = 1) -> Dataset:
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    if frames != 1:
        ds.NumberOfFrames = frames
    return ds


def _save(ds: Dataset, *, preamble: bytes = b"\0" * 128) -> bytes:
    buffer = io.BytesIO()
    ds.preamble = preamble
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def valid_dicom(rows: int = 32, cols: int = 32) -> bytes:
    ds = _image(_dataset(), rows, cols)
    ds.PixelData = (np.arange(rows * cols, dtype=np.uint16) % 4096).tobytes()
    return _save(ds)


def valid_rle_dicom() -> bytes:
    ds = _image(_dataset(), 24, 24)
    ds.set_pixel_data((np.arange(24 * 24, dtype=np.uint16) % 4096).reshape(24, 24), "MONOCHROME2", 12)
    ds.compress(RLELossless, generate_instance_uid=False)
    return _save(ds)


def valid_png(size: int = 32) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (size, size), dtype=np.uint8)).save(
        buffer, "PNG"
    )
    return buffer.getvalue()


def valid_jpeg(size: int = 32) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(4).integers(0, 255, (size, size), dtype=np.uint8)).save(
        buffer, "JPEG"
    )
    return buffer.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def png_declaring(width: int, height: int, *, rows_of_data: int = 4) -> bytes:
    """A PNG whose header declares ``width × height`` with a tiny (deflated zeros) IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    raw = zlib.compress(b"\0" * min(rows_of_data * (width + 1), 1 << 22), 9)
    return (
        b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", raw) + _png_chunk(b"IEND", b"")
    )


def nested_sequences(depth: int) -> bytes:
    """A valid file followed by a private sequence nested ``depth`` items deep (undefined lengths):
    a recursion bomb for the parser. pydicom cannot write one, so it is spliced in as bytes."""
    inner = b""
    for _ in range(depth):
        inner = (
            b"\xe1\x7f\x10\x10SQ\0\0\xff\xff\xff\xff"  # (7FE1,1010) SQ, undefined length
            + b"\xfe\xff\x00\xe0\xff\xff\xff\xff"  # item, undefined length
            + inner
            + b"\xfe\xff\x0d\xe0\0\0\0\0"  # item delimiter
            + b"\xfe\xff\xdd\xe0\0\0\0\0"  # sequence delimiter
        )
    return valid_dicom(16, 16) + inner


def hostile_corpus() -> dict[str, bytes]:
    """name → bytes; every one must be rejected with a typed `BadInput`, nothing else."""
    files: dict[str, bytes] = {}
    good = valid_dicom(64, 64)
    for pct in (10, 50, 99):
        files[f"truncated_{pct}pct.dcm"] = good[: len(good) * pct // 100]
    files["no_dicm_marker.dcm"] = good[:128] + b"XXXX" + good[132:]
    files["pe_preamble_no_dicm.dcm"] = b"MZ\x90\x00" + b"\0" * 124 + b"PE\0\0" + good[132:]
    elf = b"\x7fELF" + b"\0" * 124
    files["elf_preamble_truncated.dcm"] = _save(_image(_dataset()), preamble=elf)  # no pixel data
    files["empty.dcm"] = b""
    files["empty.png"] = b""
    files["text_named.dcm"] = b"Patient: ZZHOSTILE^PATIENT\nthis is not a DICOM file\n" * 20
    files["png_truncated.png"] = valid_png(64)[:200]

    ds = _image(_dataset(tsyntax=MPEG2_MAIN))
    ds.PixelData = _encapsulated(b"\0" * 64)
    files["unsupported_transfer_syntax_mpeg2.dcm"] = _save(ds)
    # A private transfer syntax UID patched into the file meta (same length, so offsets hold).
    explicit = valid_dicom(16, 16)
    files["unknown_transfer_syntax.dcm"] = explicit.replace(
        b"1.2.840.10008.1.2.1\0", b"1.2.3.4.5.6.7.8.9.10", 1
    )

    # Declared 65535² × 10⁴ frames over 16 bytes of encapsulated data.
    ds = _image(_dataset(tsyntax=JPEGBaseline8Bit), 65535, 65535, 10_000)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = _encapsulated(b"\xff\xd8\xff\xd9")
    files["huge_declared_encapsulated.dcm"] = _save(ds)
    ds = _image(_dataset(), 60000, 60000)
    ds.PixelData = b"\0\0" * 64
    files["huge_declared_native.dcm"] = _save(ds)
    ds = _image(_dataset(), 64, 64, 0)
    ds.PixelData = b"\0\0" * 64 * 64
    files["zero_frames.dcm"] = _save(ds)
    ds = _image(_dataset(), 0, 64)
    ds.PixelData = b""
    files["zero_rows.dcm"] = _save(ds)
    ds = _image(_dataset(), 64, 64)
    ds.PixelData = b"\0\0" * 100  # far shorter than 64 × 64 × 2
    files["short_native_pixels.dcm"] = _save(ds)
    ds = _image(_dataset(), 32, 32)
    files["image_sop_no_pixel_data.dcm"] = _save(ds)
    ds = _image(_dataset(), 32, 32)
    ds.SamplesPerPixel = 4
    ds.PixelData = b"\0" * 32 * 32 * 8
    files["four_samples.dcm"] = _save(ds)
    ds = _image(_dataset(), 32, 32)
    ds.BitsAllocated = 12
    ds.PixelData = b"\0" * 32 * 32 * 2
    files["bits_allocated_12.dcm"] = _save(ds)
    ds = _image(_dataset(), 32, 32)
    ds.PhotometricInterpretation = "HSV"
    ds.PixelData = b"\0" * 32 * 32 * 2
    files["odd_photometric.dcm"] = _save(ds)
    files["nested_sequences_5000.dcm"] = nested_sequences(5000)

    for name, sop in (
        ("rt_structure_set.dcm", RT_STRUCTURE_SET),
        ("basic_text_sr.dcm", BASIC_TEXT_SR),
        ("encapsulated_pdf.dcm", ENCAPSULATED_PDF),
    ):
        ds = _dataset(sop=sop)
        ds.Modality = "RTSTRUCT" if "rt" in name else "SR" if "sr" in name else "DOC"
        ds.ContentLabel = "ZZHOSTILE"
        files[name] = _save(ds)
    ds = _image(_dataset(sop="1.2.840.10008.5.1.4.1.1.66.4"))  # Segmentation: pixels, but not an image
    ds.PixelData = b"\0\0" * 32 * 32
    files["segmentation_with_pixels.dcm"] = _save(ds)

    files["png_bomb_30000x30000.png"] = png_declaring(30000, 30000)
    files["png_zero_width.png"] = png_declaring(0, 10)
    jpeg = bytearray(valid_jpeg(64))
    sos = jpeg.find(b"\xff\xda")
    files["jpeg_bad_markers.jpg"] = bytes(jpeg[:sos]) + b"\xff\x01\xff\xfe\x00\x00" + b"\xff" * 64
    files["jpeg_truncated.jpg"] = bytes(jpeg[: sos + 20])
    files["jpeg_soi_only.jpg"] = b"\xff\xd8\xff"
    broken = bytearray(valid_jpeg(64))
    dqt = broken.find(b"\xff\xdb")
    broken[dqt + 2 : dqt + 4] = b"\xff\xff"  # quantisation table length runs past the file
    files["jpeg_bad_segment_length.jpg"] = bytes(broken)
    return files


def _encapsulated(fragment: bytes) -> bytes:
    from pydicom.encaps import encapsulate

    return encapsulate([fragment])


def pillow_bomb() -> bytes:
    """Above Pillow's own MAX_IMAGE_PIXELS × 2: tested with our pixel cap lifted."""
    return png_declaring(20000, 10000)


def seeds() -> dict[str, bytes]:
    """Valid inputs for the fuzzers to mutate."""
    return {
        "ct.dcm": valid_dicom(32, 32),
        "rle.dcm": valid_rle_dicom(),
        "us.dcm": _ultrasound(),
        "grey.png": valid_png(24),
        "photo.jpg": valid_jpeg(24),
    }


def _ultrasound() -> bytes:
    ds = _dataset(sop=UltrasoundImageStorage)
    ds.Modality = "US"
    ds.set_pixel_data(
        np.random.default_rng(5).integers(0, 255, (2, 16, 16), dtype=np.uint8), "MONOCHROME2", 8
    )
    return _save(ds)
