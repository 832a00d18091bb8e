"""Pictures as bytes, the one place the project turns an image into pixels and PNG (numpy and Pillow only,
no torch): uint8 conversion, nearest-neighbour upscaling (pixels stay pixels), rows of images as one grid,
PNG encoding and decoding. The CLI's and the pipeline's artifacts, the precomputed assets
(``tipcore.explorer.showcase``, ``tip_grid``) and the app's pictures all go through these functions, so a
picture saved by one reads back the same in another.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np


def to_uint8(image: np.ndarray) -> np.ndarray:
    """A [0, 1] float image as uint8 (clipped, rounded half up)."""
    return (np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


def upscale(image: np.ndarray, scale: int = 4) -> np.ndarray:
    """Nearest-neighbour upscaling of an (H, W, 3) [0, 1] image, as uint8."""
    return np.kron(to_uint8(image), np.ones((scale, scale, 1), dtype=np.uint8))


def image_grid(rows: list[np.ndarray], scale: int = 4, pad: int = 2) -> np.ndarray:
    """Rows of (N, H, W, 3) [0, 1] images as one uint8 picture on white, each upscaled by ``scale``."""
    rows = [np.asarray(r, dtype=np.float32) for r in rows]
    h, w = rows[0].shape[1] * scale, rows[0].shape[2] * scale
    cols = max(len(r) for r in rows)
    canvas = np.full((len(rows) * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            top, left = pad + i * (h + pad), pad + j * (w + pad)
            canvas[top:top + h, left:left + w] = upscale(img, scale)
    return canvas


def png_bytes(picture: Any) -> bytes:
    """PNG bytes of a uint8 (H, W, 3) picture, or of a Pillow image."""
    from PIL import Image

    image = Image.fromarray(picture) if isinstance(picture, np.ndarray) else picture
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def save_png(path: Path, image: np.ndarray) -> None:
    """A [0, 1] float (H, W, 3) image as a PNG file (``load_png`` reads it back)."""
    Path(path).write_bytes(png_bytes(to_uint8(image)))


def load_png(path: Path) -> np.ndarray:
    """A PNG file as a float32 (H, W, 3) RGB image in [0, 1]."""
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
