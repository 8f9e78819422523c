"""File access shared by the manifest reader and the scan reader: local paths and fsspec URLs."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import fsspec

__all__ = ["is_url", "join", "local_file", "exists"]


def is_url(path: str) -> bool:
    return "://" in path


def join(base: str, path: str) -> str:
    """``path`` resolved against the folder ``base`` (a local folder or a URL prefix).

    Absolute paths and URLs pass unchanged; ``file://`` URLs become plain local paths so that
    SimpleITK can read them directly.
    """
    if path.startswith("file://"):
        return path[len("file://"):]
    if is_url(path) or os.path.isabs(path):
        return path
    if is_url(base):
        return base.rstrip("/") + "/" + path
    return os.path.normpath(Path(base, path))


def exists(path: str) -> bool:
    if not is_url(path):
        return os.path.isfile(path)
    fs, p = fsspec.core.url_to_fs(path)
    return fs.isfile(p)


@contextlib.contextmanager
def local_file(path: str) -> Iterator[str]:
    """A local filename for ``path``: itself when local, else a cached download.

    SimpleITK reads only local files and picks the reader from the file name, so remote
    objects are copied under their own name (``same_names``) into a temporary cache.
    """
    if not is_url(path):
        yield path
        return
    cache = tempfile.mkdtemp(prefix="radcluster-")
    try:
        yield fsspec.open_local(f"simplecache::{path}",
                                simplecache={"same_names": True, "cache_storage": cache})
    finally:
        shutil.rmtree(cache, ignore_errors=True)
