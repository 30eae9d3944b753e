"""Completeness of PNG and JPEG tiles, which GDAL does not check.

GDAL decodes a truncated PNG or JPEG tile without reporting an error (the missing rows come
back as garbage pixels), so a tile cut short by a failed copy would silently poison training
and evaluation. Both formats end with a fixed marker; a file without it is incomplete.
"""

from __future__ import annotations

from pathlib import Path

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"
JPEG_START, JPEG_END = b"\xff\xd8", b"\xff\xd9"
TAIL = 64


def incomplete(path: Path) -> bool:
    """True for a PNG without its IEND chunk or a JPEG without its end-of-image marker
    (trailing zero padding allowed); other formats are left to GDAL."""
    with open(path, "rb") as f:
        head = f.read(len(PNG_SIGNATURE))
        f.seek(0, 2)
        f.seek(max(0, f.tell() - TAIL))
        tail = f.read()
    if head == PNG_SIGNATURE:
        return not tail.endswith(PNG_END)
    if head.startswith(JPEG_START):
        return not tail.rstrip(b"\x00").endswith(JPEG_END)
    return False
