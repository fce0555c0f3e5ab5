"""Where a project's files are and what they hold: paths as the project names them, the uris
stored for images, and content hashes. The core's lowest module: ingest, the evaluation split
and the exports all name files this way."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

_CHUNK = 1 << 20


def normalised(path: str | Path) -> Path:
    """``path`` normalised (``a/./b/../c`` -> ``a/c``), relative paths staying relative and
    symlinks unresolved (a linked file keeps the path it was named by)."""
    return Path(os.path.normpath(path))


def from_root(path: str | Path, root: Path) -> Path:
    """``path`` (relative to ``root`` unless absolute) as the project names it: relative to
    ``root`` when inside it, else absolute. Ingest stores paths in this form, so that what it
    writes is the same on every machine and in every checkout; it reads files from ``root``."""
    full = Path(os.path.abspath(Path(root) / path))
    root = Path(os.path.abspath(root))
    return full.relative_to(root) if full.is_relative_to(root) else full


def hash_file(path: Path) -> str:
    """The image id of a file: the SHA-256 hex digest of its bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def uri_for(path: Path, data_dir: Path) -> str:
    """The uri stored for an image: relative to the data directory when under it, else absolute.

    ``path`` and ``data_dir`` are both named from the project root (see ``from_root``).
    """
    path, data_dir = normalised(path), normalised(data_dir)
    if path.is_absolute() == data_dir.is_absolute() and path.is_relative_to(data_dir):
        return path.relative_to(data_dir).as_posix()
    return Path(os.path.abspath(path)).as_posix()


def path_of_uri(uri: str, data_dir: Path) -> Path:
    """The file a stored uri names (the inverse of ``uri_for``)."""
    path = Path(uri)
    return normalised(path if path.is_absolute() else data_dir / path)
