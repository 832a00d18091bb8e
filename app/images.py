"""Pictures as bytes: uint8 conversion, nearest-neighbour upscaling and PNG encoding (numpy and Pillow only),
shared by the drawing helpers and the cached thumbnails."""

from __future__ import annotations

import numpy as np


def to_uint8(image: np.ndarray) -> np.ndarray:
    return (np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


def upscale(image: np.ndarray, scale: int = 4) -> np.ndarray:
    """Nearest-neighbour upscaling (pixels stay pixels) of an (H, W, 3) [0, 1] image, as uint8."""
    img = to_uint8(image)
    return np.kron(img, np.ones((scale, scale, 1), dtype=np.uint8))


def png(image_uint8: np.ndarray) -> bytes:
    """PNG bytes of a uint8 (H, W, 3) picture."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image_uint8).save(buf, format="PNG")
    return buf.getvalue()
