"""Atomic output: write to a temporary file beside the target, then rename over it.

A run that fails half-way leaves neither a partial file nor a stale temporary behind;
one killed outright leaves a temporary that the next write of the same target removes.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from reuse_analysis.errors import OutputError

#: Marks this toolkit's temporary files: ``.NAME.tmp-PID-RANDOM.SUFFIX`` beside ``NAME``.
_TMP_TAG = ".tmp-"
#: How torch.save's zip writer words a failed write.
_TORCH_WRITE_FAILURES = ("inline_container", "PytorchStreamWriter", "file write failed")
#: A temporary file this old is stale even if a process with its writer's id still runs.
_STALE_SECONDS = 24 * 3600


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success rename it to ``target``.

    The temporary name keeps the target's suffix so that writers which pick a format
    from the extension (matplotlib, pandas) still see the right one, and carries the
    writer's process id, so that the temporaries a killed writer left behind are removed
    by the next write of the same target. A failure to write (a full disk, a folder that
    cannot be written) is an OutputError that names the target, not the temporary file.
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(target)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{target.name}{_TMP_TAG}{os.getpid()}-",
            suffix=target.suffix,
            dir=target.parent,
        )
        os.close(fd)
    except OSError as exc:
        raise _output_error(target, exc) from None
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates the file 0600; give it the permissions a plain open() would.
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, target)
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        raise _output_error(target, exc) from None
    except RuntimeError as exc:
        tmp_path.unlink(missing_ok=True)
        # torch.save reports a failed write (a full disk) as a RuntimeError of its zip writer.
        if any(m in str(exc) for m in _TORCH_WRITE_FAILURES):
            if shutil.disk_usage(target.parent).free < 2**20:
                exc = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            raise _output_error(target, exc) from None
        raise
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def _output_error(target: Path, exc: BaseException) -> OutputError:
    reason = getattr(exc, "strerror", None) or str(exc).strip().splitlines()[0]
    if getattr(exc, "errno", None) == errno.ENOSPC or "space" in reason.lower():
        advice = "free some space or write elsewhere with -o"
    elif isinstance(exc, (FileExistsError, NotADirectoryError)):
        reason = "part of its folder path is a file"
        advice = "choose another path with -o"
    else:
        advice = "choose a folder you can write to with -o"
    shown = str(target) if str(target).isprintable() else repr(str(target))
    return OutputError(f"cannot write {shown}: {reason}; {advice}")


def _remove_stale_temporaries(target: Path) -> None:
    """Delete temporaries of ``target`` whose writer is gone (killed before it renamed)."""
    now = time.time()
    for tmp in target.parent.glob(f".{glob.escape(target.name)}{_TMP_TAG}*"):
        pid = tmp.name[len(target.name) + 1 + len(_TMP_TAG) :].split("-", 1)[0]
        try:
            old = now - tmp.stat().st_mtime > _STALE_SECONDS
            if old or not (pid.isdigit() and _alive(int(pid))):
                tmp.unlink()
        except OSError:
            continue


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
