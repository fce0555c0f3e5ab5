"""Reading an image file the way the specialists need it: BGR for OpenCV, RGB for the ONNX
detectors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def read_bgr(path: Path | str) -> np.ndarray:
    """The image at ``path`` as a 3-channel BGR uint8 array, pixels as stored (like
    ``read_rgb``: a label's box is in the stored orientation, so no EXIF rotation): OpenCV
    decodes it (from bytes, so any path works), PIL what OpenCV cannot."""
    import cv2

    data = np.fromfile(str(path), dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION) if data.size else None
    if image is None:
        try:
            with Image.open(path) as opened:
                return cv2.cvtColor(np.asarray(opened.convert("RGB")), cv2.COLOR_RGB2BGR)
        except OSError as error:
            raise ValueError(f"cannot decode image {path}: {error}") from error
    return image


def read_rgb(path: Path | str) -> np.ndarray:
    """The image at ``path`` as an RGB uint8 array, pixels as stored (no EXIF rotation: the
    label boxes of a COCO file are in the stored orientation, as the parity fixtures are)."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))
