"""Atomic output: write to a temporary file beside the target, then rename over it.

A run that fails half-way leaves neither a partial file nor a stale temporary behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success rename it to ``target``.

    The temporary name keeps the target's suffix so that writers which pick a format
    from the extension (matplotlib, pandas) still see the right one.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{target.stem}.", suffix=f".tmp{target.suffix}", dir=target.parent
    )
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates the file 0600; give it the permissions a plain open() would.
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, target)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(target: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``target`` atomically (UTF-8)."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


FIGURE_FORMATS = (".png", ".pdf", ".svg")


def save_figure_atomic(fig: Any, target: str | os.PathLike[str], dpi: int = 150) -> None:
    """Save a matplotlib figure to ``target`` atomically, in the format its extension names.

    PNGs use a fast zlib level: the large flat areas of these figures compress well anyway.
    """
    fmt = Path(target).suffix[1:].lower()
    extra = {"pil_kwargs": {"compress_level": 1}} if fmt == "png" else {}
    with atomic_path(target) as tmp:
        fig.savefig(tmp, dpi=dpi, format=fmt, **extra)
