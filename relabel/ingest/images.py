"""Image files: listing and full decoding (paths, uris and hashes: ``relabel.files``)."""

from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from PIL import Image, ImageFile

from relabel.files import normalised
from relabel.ingest.records import Problem

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
# what PIL raises for an image with more pixels than PIL.Image.MAX_IMAGE_PIXELS (the warning
# too, once ``_strict_decoding`` has made it an error)
_DECOMPRESSION_BOMB = (Image.DecompressionBombError, Image.DecompressionBombWarning)


def list_image_files(folder: Path) -> list[Path]:
    """Every image file under ``folder`` (subfolders too), by extension, in a stable order."""
    return sorted(
        normalised(path)
        for path in folder.rglob("*")
        if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()
    )


def decode_image(path: Path, image_id: str) -> tuple[int, int] | Problem:
    """Width and height of a fully decoded image, or the problem that stops it being used.

    The bytes are hashed again as they are decoded, so what is decoded is exactly the image
    the id names (a file changed since it was catalogued is caught, not silently mislabelled).
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return Problem("missing_file", f"image file {path} does not exist")
    except OSError as error:
        return Problem("unreadable_image", f"cannot read {path}: {error}")
    if hashlib.sha256(data).hexdigest() != image_id:
        return Problem("changed_file", f"{path} changed after it was catalogued as {image_id}")
    with _strict_decoding():
        try:
            image = Image.open(io.BytesIO(data))
        except _DECOMPRESSION_BOMB as error:
            return _bomb_problem(path, error)
        except Exception as error:  # PIL raises many types for files it cannot identify
            return Problem("unreadable_image", f"{path} is not a readable image: {error}")
        try:
            image.load()
        except _DECOMPRESSION_BOMB as error:  # some formats learn a frame's size as they decode it
            return _bomb_problem(path, error)
        except Exception as error:
            reason = "truncated_image" if _is_truncation(error) else "unreadable_image"
            return Problem(reason, f"{path} ({image.format}, {len(data)} bytes) fails to decode: {error}")
    return image.size


def decompression_bomb(path: Path) -> Problem | None:
    """The ``decompression_bomb`` problem of an image file whose header declares more pixels
    than ``PIL.Image.MAX_IMAGE_PIXELS``, found from the header alone; None for any other file
    (one that does not open at all is left to ``decode_image``, which says why)."""
    with _strict_decoding():
        try:
            with Image.open(path):
                return None
        except _DECOMPRESSION_BOMB as error:
            return _bomb_problem(path, error)
        except Exception:  # PIL raises many types for files it cannot identify
            return None


def _bomb_problem(path: Path, error: Exception) -> Problem:
    # PIL's message gives the declared pixel count and the limit it was held to
    return Problem(
        "decompression_bomb",
        f"{path} is not decoded: it declares more pixels than PIL.Image.MAX_IMAGE_PIXELS "
        f"({Image.MAX_IMAGE_PIXELS}) allows. {error}",
    )


def _is_truncation(error: Exception) -> bool:
    return isinstance(error, EOFError) or "truncated" in str(error).lower()


@contextmanager
def _strict_decoding() -> Iterator[None]:
    # with LOAD_TRUNCATED_IMAGES on, PIL pads a cut file with grey and reports success; a
    # library elsewhere in the process may have switched it on, so force it off here
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    # PIL raises DecompressionBombError above twice MAX_IMAGE_PIXELS but only warns between
    # once and twice the limit, and whether that warning stops anything depends on the
    # process's warning filters (ignored in one run, an error under ``-W error`` in the next).
    # An image over the limit is refused as a bomb either way, deliberately: the same file gets
    # the same answer in every run, nothing decodes an image PIL itself calls too large (ingest,
    # the perceptual hash and every specialist decode it in full), and a refused image goes to
    # quarantine with its labels and the reason, so no label is lost silently. Genuine photos
    # over the default limit (about 89 megapixels) need MAX_IMAGE_PIXELS raised where ingest runs.
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            yield
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = previous
