"""What a JPEG file declares, read from its markers without decoding it.

- The frame size: a decompression bomb declares a huge image in a few bytes (30000x30000: a 2.7 GB decode for a
  file of 1 kB), so an image declaring more than ``MAX_PIXELS`` is refused before any decoder allocates it.
- Where the compressed data starts, so that the end-of-image marker is looked for after it: anywhere after it,
  since some exports pad files after the marker (every decoder stops at it), but never in a marker segment
  before it (an EXIF thumbnail ends with its own marker, which says nothing about the image's data).

The markers are walked as libjpeg reads them: stray bytes and fill bytes before a marker are skipped, every
segment is stepped over by its length, so only the header is read.
"""
import io
from dataclasses import dataclass
from typing import BinaryIO

# Cells are 224x224 crops (the demo's and the 2021 set's are smaller): 4096x4096 (16.8 MP, 50 MB decoded) is far
# above any cell image and bounds the memory one decode takes.
MAX_SIDE = 4096
MAX_PIXELS = MAX_SIDE * MAX_SIDE
SOI, EOI, SOS = 0xD8, 0xD9, 0xDA
SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})  # frame headers
STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM and RSTn: markers without a length
TAIL = 64  # bytes at the end of a file looked at first for the end-of-image marker (the common, unpadded case)


@dataclass(frozen=True)
class JpegHeader:
    """The frame size a JPEG declares and the offset of its first start-of-scan marker (the data follows it)."""

    height: int
    width: int
    scan: int

    @property
    def pixels(self) -> int:
        return self.height * self.width


def read_header(fh: BinaryIO) -> JpegHeader | str:
    """The header of the JPEG open in ``fh`` (at offset 0), or what is wrong with it (a short text)."""
    if fh.read(2) != b"\xff\xd8":
        return "not a JPEG (no start-of-image marker)"
    size = None
    while True:
        marker = _next_marker(fh)
        if marker is None:
            return "truncated JPEG (ends before the image data)"
        code, at = marker
        if code in STANDALONE:
            continue
        if code in (SOI, EOI):
            return f"damaged JPEG ({'a second start' if code == SOI else 'an end'}-of-image marker before the image data)"
        length = fh.read(2)
        if len(length) < 2:
            return "truncated JPEG (ends before the image data)"
        if int.from_bytes(length, "big") < 2:
            return f"damaged JPEG (a marker segment of length {int.from_bytes(length, 'big')} at byte {at})"
        if code == SOS:
            return JpegHeader(*size, scan=at) if size else "damaged JPEG (image data before the frame header)"
        if code in SOF:
            if size:
                return "damaged JPEG (two frame headers)"
            frame = fh.read(5)
            if len(frame) < 5:
                return "truncated JPEG (ends before the image data)"
            size = int.from_bytes(frame[1:3], "big"), int.from_bytes(frame[3:5], "big")
        fh.seek(at + 2 + int.from_bytes(length, "big"))


def size_problem(header: JpegHeader) -> str | None:
    """What is wrong with the size a JPEG declares (an empty image, or more than MAX_PIXELS), if anything."""
    h, w = header.height, header.width
    if not h or not w:
        return f"damaged JPEG (declares an empty {h}x{w} image)"
    if header.pixels > MAX_PIXELS:
        return (f"declares a {h}x{w} image ({header.pixels / 1e6:.1f} MP), more than the {MAX_SIDE}x{MAX_SIDE} "
                f"({MAX_PIXELS / 1e6:.1f} MP) a cell image may have (a decompression bomb?)")
    return None


def has_end_marker(fh: BinaryIO, scan: int, size: int) -> bool:
    """Whether an end-of-image marker follows the first scan of the JPEG open in ``fh`` (``size`` bytes long):
    at its end, or earlier with bytes padded after it."""
    fh.seek(max(scan, size - TAIL))
    if b"\xff\xd9" in fh.read():
        return True
    fh.seek(scan)
    last = b""
    while chunk := fh.read(1 << 20):
        if b"\xff\xd9" in last + chunk[:1] or b"\xff\xd9" in chunk:
            return True
        last = chunk[-1:]
    return False


def declared_size_problem(data: bytes | memoryview) -> str | None:
    """The size problem (``size_problem``) of the JPEG held in ``data``, checked before decoding it; None when the
    size is sane or ``data`` holds no readable JPEG header (the decoder then says what is wrong)."""
    header = read_header(io.BytesIO(data))
    return None if isinstance(header, str) or not header.pixels else size_problem(header)


def _next_marker(fh: BinaryIO) -> tuple[int, int] | None:
    """The code and offset (of its last 0xFF) of the next marker, skipping stray and fill bytes; None at the end."""
    while True:
        byte = fh.read(1)
        if not byte:
            return None
        if byte != b"\xff":
            if not _skip_to_ff(fh):
                return None
            continue
        at = fh.tell() - 1
        code = fh.read(1)
        while code == b"\xff":  # fill bytes: the marker's 0xFF is the last of them
            at += 1
            code = fh.read(1)
        if not code:
            return None
        if code[0]:  # 0xFF00 outside the data is a stray byte pair, not a marker
            return code[0], at


def _skip_to_ff(fh: BinaryIO) -> bool:
    """Move to the next 0xFF byte (False if there is none)."""
    while True:
        start = fh.tell()
        chunk = fh.read(1 << 16)
        if not chunk:
            return False
        i = chunk.find(b"\xff")
        if i >= 0:
            fh.seek(start + i)
            return True
