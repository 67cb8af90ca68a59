"""One content-addressed cache for every costly result: probes, prune evaluations, sweeps
and compare's measurements.

A value is stored under a hash of a canonical JSON of everything it depends on (a hash of
the weights among them, :func:`weights_hash`), so changed inputs can never return a stale
value and nothing ever needs invalidating. Each entry is one file ``NAME-DIGEST.json``
holding its inputs and its value, written atomically (temporary file, then rename): a run
killed while writing leaves the previous entry or none, never half of one. A computation
made of many parts (the models of a sweep, the chunks of a probe) keeps its parts in one
entry, a :class:`Record`, saved as they come in, so a rerun computes only what is missing.

Not ``joblib.Memory``: it memoises whole calls (an interrupted sweep would start over),
pickles its values and hashes arguments by pickling them; these results need resumable
parts, plain JSON values and keys that name what they depend on.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from reuse_analysis._io import write_text_atomic

T = TypeVar("T")
#: Hex digits of the SHA-256 in an entry's file name; the stored inputs decide a hit.
DIGEST_CHARS = 16


def canonical_json(inputs: Any) -> str:
    """The one JSON text of ``inputs``: sorted keys, no spaces, tuples as lists.

    Anything that is not plain data (a tensor, a path object, a function) is refused, so
    that a key never depends on a ``repr``.
    """
    return json.dumps(inputs, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def digest(inputs: Any) -> str:
    """SHA-256 (hex) of :func:`canonical_json` of ``inputs``."""
    return hashlib.sha256(canonical_json(inputs).encode()).hexdigest()


def weights_hash(state_dict: Mapping[str, Any]) -> str:
    """SHA-256 of every tensor (name, dtype, shape, bytes): identifies the weights."""
    import torch

    h = hashlib.sha256()
    for key in sorted(state_dict):
        t = state_dict[key].detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class Cache:
    """Entries in the folder ``root`` (created when first written); ``None``: no cache
    (every lookup misses and nothing is written)."""

    def __init__(self, root: str | os.PathLike[str] | None) -> None:
        self.root = Path(root) if root is not None else None

    def path(self, name: str, inputs: Any) -> Path | None:
        """Where the entry of ``inputs`` lives (``None`` without a folder)."""
        if self.root is None:
            return None
        return self.root / f"{name}-{digest(inputs)[:DIGEST_CHARS]}.json"

    def get(self, name: str, inputs: Any, default: Any = None) -> Any:
        """The stored value of ``inputs``, or ``default`` (no entry, an unreadable one,
        or one stored for other inputs under the same short digest)."""
        path = self.path(name, inputs)
        if path is None:
            return default
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return default
        if not isinstance(saved, dict) or "value" not in saved:
            return default
        if canonical_json(saved.get("inputs")) != canonical_json(inputs):
            return default
        return saved["value"]

    def put(self, name: str, inputs: Any, value: Any) -> None:
        """Store ``value`` (plain JSON data) for ``inputs``, atomically."""
        path = self.path(name, inputs)
        if path is None:
            return
        text = json.dumps({"inputs": inputs, "value": value}, sort_keys=True)
        write_text_atomic(path, text + "\n")

    def compute(self, name: str, inputs: Any, fn: Callable[[], T]) -> T:
        """The stored value of ``inputs``, or ``fn()``, stored before it is returned."""
        missing = object()
        value = self.get(name, inputs, missing)
        if value is missing:
            value = fn()
            self.put(name, inputs, value)
        return value

    def record(self, name: str, inputs: Any, *, save_every_s: float = 0.0) -> Record:
        """The parts of one computation stored so far (empty on a miss); see :class:`Record`."""
        return Record(self, name, inputs, save_every_s)


class Record:
    """The parts of one resumable computation, stored as one cache entry.

    ``parts`` is a dict of plain data; :meth:`put` adds a part and saves; code that fills
    ``parts`` in place calls :meth:`save`, which writes at most every ``save_every_s``
    seconds unless forced (a long computation of small parts need not write after each).
    """

    def __init__(self, cache: Cache, name: str, inputs: Any, save_every_s: float = 0.0) -> None:
        self.cache, self.name, self.inputs = cache, name, inputs
        self.save_every_s = save_every_s
        stored = cache.get(name, inputs)
        self.parts: dict[str, Any] = stored if isinstance(stored, dict) else {}
        self._saved = time.monotonic()

    @property
    def path(self) -> Path | None:
        return self.cache.path(self.name, self.inputs)

    def __contains__(self, part: object) -> bool:
        return part in self.parts

    def __getitem__(self, part: str) -> Any:
        return self.parts[part]

    def put(self, part: str, value: Any) -> None:
        """Add one finished part and save it at once."""
        self.parts[part] = value
        self.save(force=True)

    def save(self, force: bool = False) -> None:
        """Write the parts (atomically), unless the last write is under ``save_every_s`` old."""
        if not force and time.monotonic() - self._saved < self.save_every_s:
            return
        self.cache.put(self.name, self.inputs, self.parts)
        self._saved = time.monotonic()


__all__ = ["Cache", "Record", "canonical_json", "digest", "weights_hash"]
