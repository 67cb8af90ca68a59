"""Reading ``torch.save`` files without running any of their code.

Modelled on torch's ``_weights_only_unpickler``: an allow-list of globals (torch's own,
plus the harmless types training scripts store), and nothing else is ever called. Unlike
it, a global that is not allowed does not stop the load: it becomes an inert
:class:`Placeholder` that records the arguments and state the pickle gives it, so a whole
pickled ``nn.Module`` (a notebook's ``DataParallel(DenseNet)`` with its classes in
``__main__``) still yields its module tree and tensors. A pickle that would *call*
something outside the allow-list (``os.system``, ``eval``, ``functools.partial``) is
reported as code, with the names, and never run.

Both of torch's formats are read here, tensor by tensor, with the checks ``torch.load``
leaves out: every zip record against its CRC and against the size its storage claims,
every tensor against the bounds of its storage, the legacy format's storages against the
bytes the file holds, and the object graph against limits on nesting depth and size.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import pathlib
import pickle
import struct
import sys
import warnings
import zipfile
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from reuse_analysis.errors import CheckpointError

#: Largest pickle (``data.pkl``) read; a DenseNet's is well under a megabyte.
MAX_PICKLE_BYTES = 256 * 2**20
#: Deepest nesting of containers accepted in the pickled objects.
MAX_DEPTH = 1000
#: Most container items a full walk of the objects may visit (shared items count each time).
MAX_ITEMS = 5_000_000
#: Tensor data a zip may decompress to, beyond its own size (re-deflated files are fine).
_INFLATE_FACTOR, _INFLATE_SLACK = 20, 256 * 2**20

_LEGACY_MAGIC = torch.serialization.MAGIC_NUMBER
_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}
# Modules whose every name runs code or touches the system when called.
_CODE_MODULES = frozenset(
    """os posix nt subprocess sys shutil socket importlib runpy pty ctypes marshal pickle types
    code codeop webbrowser io _io multiprocessing threading signal builtins operator functools
    inspect platform asyncio ssl urllib http requests pathlib""".split()  # noqa: SIM905
)

# Modules whose lowercase callables build data (``datetime.datetime``, ``re._compile``,
# ``numpy.random._pickle.__randomstate_ctor``): called in a pickle, they are not code.
_DATA_MODULES = frozenset(
    """numpy datetime collections decimal fractions uuid enum re array typing copyreg _codecs
    omegaconf""".split()  # noqa: SIM905
)


class Placeholder:
    """An object of a class that is not allowed: what the pickle said about it, never run.

    ``args`` are the constructor arguments, ``state`` what ``__setstate__`` would get (for
    an ``nn.Module``, its ``__dict__`` with ``_parameters``, ``_buffers``, ``_modules``),
    ``items`` and ``listitems`` what a dict or list subclass would hold.
    """

    #: ``module.name`` of the global this stands for (set on each generated subclass).
    global_name = "?"
    #: Whether the pickle called the global (REDUCE), rather than only building an object.
    called = False

    def __new__(cls, *args: Any, **kwargs: Any) -> Placeholder:
        obj = object.__new__(cls)
        obj.__dict__.update(args=args, kwargs=kwargs, state=None, items={}, listitems=[])
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Only a call (REDUCE) runs __init__; NEWOBJ and copyreg's reconstructor do not.
        type(self).called = True

    def __setstate__(self, state: Any) -> None:
        self.__dict__["state"] = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.__dict__["items"][key] = value

    def append(self, value: Any) -> None:
        self.__dict__["listitems"].append(value)

    def extend(self, values: Any) -> None:
        self.__dict__["listitems"].extend(values)

    def __repr__(self) -> str:
        return f"<{self.global_name} (not run)>"

    @property
    def attributes(self) -> dict[str, Any]:
        """The instance ``__dict__`` the pickle carried (``(dict, slots)`` states merged)."""
        state = self.__dict__["state"]
        if isinstance(state, tuple) and len(state) == 2:
            merged: dict[str, Any] = {}
            for part in state:
                if isinstance(part, Mapping):
                    merged.update(part)
            return merged
        return dict(state) if isinstance(state, Mapping) else {}


class NotTorchSave(CheckpointError):
    """The file is not a ``torch.save`` file at all (rather than a damaged one)."""


@dataclass(frozen=True)
class RefusedTensor:
    """A tensor this toolkit does not analyse; ``reason`` says what it is and what to do."""

    reason: str


@dataclass
class _Storage:
    """The bytes of one stored tensor storage and the element type the file gave it."""

    untyped: torch.UntypedStorage
    dtype: torch.dtype


def _looks_like_class(qualified: str) -> bool:
    last = qualified.rsplit(".", 1)[-1].lstrip("_")
    return last[:1].isupper()


def _element_size(dtype: torch.dtype) -> int:
    return torch._utils._element_size(dtype)


def _numel(size: tuple[int, ...]) -> int:
    n = 1
    for s in size:
        n *= s
    return n


def _rebuild(storage: Any, offset: Any, size: Any, stride: Any, dtype: torch.dtype | None = None):
    """A tensor over ``storage``, after checking that it stays inside the stored bytes."""
    if not isinstance(storage, _Storage):
        raise CheckpointError("a tensor in the pickle has no stored data behind it")
    dtype = dtype or storage.dtype
    size, stride = tuple(size), tuple(stride)
    if not all(isinstance(v, int) and v >= 0 for v in (offset, *size, *stride)) or len(size) != len(
        stride
    ):
        raise CheckpointError(f"a tensor has an invalid shape {size} or strides {stride}")
    if dtype.is_complex:
        return RefusedTensor(f"complex ({dtype}); DenseNet weights are real numbers")
    if str(dtype).startswith(("torch.qint", "torch.quint")):
        return RefusedTensor(f"quantized ({dtype}); load the float model's weights instead")
    needed = offset + sum((s - 1) * st for s, st in zip(size, stride, strict=True)) + 1
    if 0 in size:
        needed = 0
    have = storage.untyped.nbytes() // _element_size(dtype)
    if needed > have:
        raise CheckpointError(
            f"a tensor of shape {size} reads {needed} values but its storage holds {have}"
        )
    return torch.empty((0,), dtype=dtype).set_(storage.untyped, offset, size, stride)


def _rebuild_tensor(storage, offset, size, stride):
    return _rebuild(storage, offset, size, stride)


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks, metadata=None):
    return _rebuild(storage, offset, size, stride)


def _rebuild_tensor_v3(storage, offset, size, stride, requires_grad, hooks, dtype, metadata=None):
    return _rebuild(storage, offset, size, stride, dtype)


def _rebuild_parameter(data, requires_grad, hooks, state=None):
    return data


def _rebuild_from_type_v2(func, new_type, args, state):
    # The subclass and its Python state are dropped: the analysis needs the values only.
    return func(*args)


def _rebuild_device_tensor(data, dtype, device, requires_grad):
    if isinstance(data, np.ndarray):
        data = torch.from_numpy(data)
    return data.to(dtype=dtype) if isinstance(data, torch.Tensor) else data


def _refuse(reason: str) -> Callable[..., RefusedTensor]:
    def rebuild(*args: Any, **kwargs: Any) -> RefusedTensor:
        return RefusedTensor(reason)

    return rebuild


def _container(kind: type) -> Callable[..., Any]:
    """``kind(arg)`` for an argument the pickle itself holds (no ``bytearray(10**12)``)."""

    def build(*args: Any) -> Any:
        if args and not isinstance(args[0], (list, tuple, set, frozenset, dict, str, bytes)):
            raise CheckpointError(f"the pickle builds a {kind.__name__} from a non-container")
        return kind(*args)

    return build


def _reconstructor(cls: Any, base: Any, state: Any) -> Any:
    """copyreg._reconstructor (protocols 0 and 1) for placeholders and plain allowed
    classes, without calling any constructor."""
    if isinstance(cls, type) and issubclass(cls, Placeholder):
        obj = cls.__new__(cls)
        if state is not None:
            obj.__dict__["args"] = (state,)
        return obj
    if isinstance(cls, type) and base is object and cls in (argparse.Namespace,):
        return object.__new__(cls)
    raise CheckpointError(f"the pickle reconstructs {cls!r} through copyreg")


def _defaultdict(*args: Any) -> dict[Any, Any]:
    """A ``collections.defaultdict`` as the plain dict it holds (its factory is not kept)."""
    return {}


def _overrides() -> dict[str, Any]:
    u = "torch._utils."
    sparse = "sparse (only its nonzero entries stored); save it with .to_dense()"
    return {
        u + "_rebuild_tensor": _rebuild_tensor,
        u + "_rebuild_tensor_v2": _rebuild_tensor_v2,
        u + "_rebuild_tensor_v3": _rebuild_tensor_v3,
        u + "_rebuild_parameter": _rebuild_parameter,
        u + "_rebuild_parameter_with_state": _rebuild_parameter,
        "torch._tensor._rebuild_from_type_v2": _rebuild_from_type_v2,
        u + "_rebuild_device_tensor_from_numpy": _rebuild_device_tensor,
        u + "_rebuild_device_tensor_from_cpu_tensor": _rebuild_device_tensor,
        u + "_rebuild_sparse_tensor": _refuse(sparse),
        u + "_rebuild_meta_tensor_no_storage": _refuse(
            "a meta-device tensor (a shape without values); save the trained weights"
        ),
        u + "_rebuild_qtensor": _refuse(
            "quantized (int8 values with a scale); load the float model's weights instead"
        ),
        u + "_rebuild_nested_tensor": _refuse("a nested tensor; save a regular one"),
        u + "_rebuild_wrapper_subclass": _refuse(
            "a tensor subclass without stored data; save plain tensors"
        ),
        "copyreg._reconstructor": _reconstructor,
        "builtins.set": _container(set),
        "builtins.frozenset": _container(frozenset),
        "builtins.bytearray": _container(bytearray),
        "builtins.list": _container(list),
        "builtins.tuple": _container(tuple),
        "builtins.dict": _container(dict),
        "collections.OrderedDict": _container(OrderedDict),
        "collections.Counter": _container(Counter),
        "collections.defaultdict": _defaultdict,
        "collections.deque": _container(list),
    }


@dataclass(frozen=True)
class _Inert:
    """An allowed class the pickle may name but not call (``torch.Tensor(10**12)`` and
    ``numpy.ndarray((10**12,))`` would allocate whatever the pickle asks)."""

    name: str

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise CheckpointError(f"the pickle calls {self.name} directly")


_NDARRAY = _Inert("numpy.ndarray")


def _reconstruct_array(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    """numpy's array unpickling, which always starts from an empty array of shape (0,)."""
    core = np._core if hasattr(np, "_core") else np.core
    if subtype is not _NDARRAY or tuple(shape) != (0,):
        raise CheckpointError("the pickle builds a numpy array in an unusual way")
    return core.multiarray._reconstruct(np.ndarray, (0,), dtype)


def _numpy_globals() -> dict[str, Any]:
    core = np._core if hasattr(np, "_core") else np.core
    found: dict[str, Any] = {"numpy.ndarray": _NDARRAY, "numpy.dtype": np.dtype}
    for prefix in ("numpy.core.multiarray.", "numpy._core.multiarray."):
        found[prefix + "scalar"] = core.multiarray.scalar
        found[prefix + "_reconstruct"] = _reconstruct_array
    for name in dir(np.dtypes):
        if name.endswith("DType"):
            found[f"numpy.dtypes.{name}"] = getattr(np.dtypes, name)
    return found


def allowed_globals() -> dict[str, Any]:
    """Every global a checkpoint may name, by ``module.name``: torch's weights-only list,
    the types registered with ``torch.serialization.add_safe_globals``, numpy arrays and
    scalars, ``argparse.Namespace`` and paths; torch's tensor rebuilders are replaced by
    checked ones and the tensor kinds the analysis cannot use by refusals."""
    allowed = dict(torch._weights_only_unpickler._get_allowed_globals())
    for entry in torch.serialization.get_safe_globals():
        obj, name = entry if isinstance(entry, tuple) else (entry, None)
        allowed[name or f"{obj.__module__}.{obj.__qualname__}"] = obj
    for name, obj in list(allowed.items()):
        # Tensor and storage classes are only ever arguments (a type to rebuild, a storage
        # type in a persistent id); called, they would allocate what the pickle says.
        if isinstance(obj, type) and name.endswith(("Tensor", "Storage", "Parameter")):
            allowed[name] = _Inert(name)
    allowed.update(_numpy_globals())
    for obj in (argparse.Namespace, pathlib.PosixPath, pathlib.WindowsPath, pathlib.PurePosixPath):
        allowed[f"{obj.__module__}.{obj.__qualname__}"] = obj
    allowed.update({f"builtins.{t.__name__}": t for t in (int, float, bool, complex)})
    allowed.update({"builtins.str": _container(str), "builtins.bytes": _container(bytes)})
    allowed["builtins.object"] = object
    allowed.update(_overrides())
    return allowed


class _Unpickler(pickle.Unpickler):
    """Resolves allowed globals, turns every other one into a placeholder class."""

    def __init__(self, file: Any, reader: _Reader) -> None:
        super().__init__(file, encoding="utf-8")
        self._reader = reader

    def find_class(self, module: str, name: str) -> Any:
        return self._reader.resolve(module, name)

    def persistent_load(self, pid: Any) -> Any:
        return self._reader.persistent_load(pid)


@dataclass
class _Reader:
    """State shared by the pickles of one file: globals seen, storages read."""

    load_storage: Callable[[str, torch.dtype, int], _Storage]
    allowed: dict[str, Any] = field(default_factory=allowed_globals)
    placeholders: dict[str, type[Placeholder]] = field(default_factory=dict)
    code: set[str] = field(default_factory=set)
    storages: dict[str, _Storage] = field(default_factory=dict)

    def resolve(self, module: str, name: str) -> Any:
        module = _PY2_MODULES.get(module, module)
        full = f"{module}.{name}"
        if full in self.allowed:
            return self.allowed[full]
        if module.split(".")[0] in _CODE_MODULES:
            self.code.add(full)
        if full not in self.placeholders:
            self.placeholders[full] = type(
                name.rsplit(".", 1)[-1] or "Global",
                (Placeholder,),
                {"global_name": full, "called": False},
            )
        return self.placeholders[full]

    def persistent_load(self, pid: Any) -> Any:
        if isinstance(pid, tuple) and len(pid) == 4 and _ascii(pid[0]) == "module":
            # The legacy format records a pickled module's class with its source code,
            # which torch only compares with the class it imports; here the class stays a
            # placeholder and the source is ignored.
            return pid[1]
        if not isinstance(pid, tuple) or len(pid) < 5 or _ascii(pid[0]) != "storage":
            raise CheckpointError(
                f"the pickle refers to unknown stored data ({type(pid).__name__})"
            )
        storage_type, key, numel = pid[1], str(pid[2]), pid[4]
        dtype = _storage_dtype(storage_type)
        if not isinstance(numel, int) or numel < 0:
            raise CheckpointError(f"storage {key} claims {numel!r} values")
        if key not in self.storages:
            self.storages[key] = self.load_storage(key, dtype, numel * _element_size(dtype))
        stored = self.storages[key]
        view = pid[5] if len(pid) > 5 else None
        if view is not None:  # the legacy format's storage views (PyTorch < 1.0)
            _, start, count = view
            item = _element_size(dtype)
            if start < 0 or count < 0 or (start + count) * item > stored.untyped.nbytes():
                raise CheckpointError(f"a view of storage {key} lies outside it")
            return _Storage(stored.untyped[start * item : (start + count) * item], dtype)
        return _Storage(stored.untyped, dtype)

    def code_globals(self) -> list[str]:
        """Globals the pickle would run: called functions and anything from _CODE_MODULES."""
        called = {
            n
            for n, cls in self.placeholders.items()
            if cls.called and not _looks_like_class(n) and n.split(".")[0] not in _DATA_MODULES
        }
        return sorted(self.code | called)

    def unpickle(self, data: bytes) -> Any:
        return _Unpickler(io.BytesIO(data), self).load()


def _ascii(value: Any) -> Any:
    return value.decode("ascii", "replace") if isinstance(value, bytes) else value


def _storage_dtype(storage_type: Any) -> torch.dtype:
    if storage_type is torch.UntypedStorage or (
        isinstance(storage_type, _Inert) and storage_type.name.endswith("UntypedStorage")
    ):
        return torch.uint8
    if isinstance(storage_type, torch.serialization.StorageType):
        return storage_type.dtype
    name = getattr(storage_type, "__name__", "")
    if (
        isinstance(storage_type, type)
        and name.endswith("Storage")
        and storage_type.__module__
        in (
            "torch",
            "torch.cuda",
        )
    ):
        try:
            return torch.storage._get_dtype_from_pickle_storage_type(name)
        except KeyError:
            pass
    raise CheckpointError(f"a storage of unknown type {storage_type!r}")


def _untyped(buffer: bytearray) -> torch.UntypedStorage:
    if not buffer:
        return torch.UntypedStorage(0)
    return torch.frombuffer(buffer, dtype=torch.uint8).untyped_storage()


def _byteswap(buffer: bytearray, item: int) -> bytearray:
    if item == 1:
        return buffer
    if item not in (2, 4, 8):
        raise CheckpointError(f"big-endian data with {item}-byte elements cannot be converted")
    return bytearray(np.frombuffer(bytes(buffer), dtype=f"u{item}").byteswap().tobytes())


def check_object_shape(obj: Any) -> None:
    """Refuse nesting deeper than MAX_DEPTH or a walk longer than MAX_ITEMS.

    Iterative, so a list nested 100,000 deep is refused instead of overflowing Python's
    stack later; shared sub-objects are measured once but counted each time they are
    reached, which is what any recursive reader of the data would pay.
    """
    depth: dict[int, int] = {}
    items: dict[int, int] = {}
    stack: list[tuple[Any, bool]] = [(obj, False)]
    open_ids: set[int] = set()
    while stack:
        node, done = stack.pop()
        key = id(node)
        children = _children(node)
        if not done:
            if key in depth or key in open_ids:
                continue
            open_ids.add(key)
            stack.append((node, True))
            stack.extend((c, False) for c in children if id(c) not in depth)
            if len(open_ids) > MAX_DEPTH:
                raise CheckpointError(f"its objects are nested more than {MAX_DEPTH} deep")
            continue
        open_ids.discard(key)
        # Children still open are cycles back to an ancestor: not counted again.
        depth[key] = 1 + max((depth.get(id(c), 0) for c in children), default=0)
        items[key] = 1 + sum(items.get(id(c), 0) for c in children)
        if depth[key] > MAX_DEPTH:
            raise CheckpointError(f"its objects are nested more than {MAX_DEPTH} deep")
        if items[key] > MAX_ITEMS:
            raise CheckpointError(f"its objects hold more than {MAX_ITEMS:,} items")


def _children(node: Any) -> list[Any]:
    if isinstance(node, (str, bytes, int, float, bool, type(None), torch.Tensor, np.ndarray)):
        return []
    if isinstance(node, Mapping):
        return [*node.keys(), *node.values()]
    if isinstance(node, (list, tuple, set, frozenset)):
        return list(node)
    if isinstance(node, Placeholder):
        d = node.__dict__
        return [d["args"], d["kwargs"], d["state"], d["items"], d["listitems"]]
    if isinstance(node, argparse.Namespace):
        return [vars(node)]
    return []


@dataclass
class Unpickled:
    """What a torch.save file holds, read without running it."""

    obj: Any
    #: Globals the pickle would call to load (``os.system``, …); empty for plain data.
    code: list[str]
    #: Every global that became a placeholder (a class whose code is not here or not run).
    placeholders: list[str]


def _finish(reader: _Reader, obj: Any) -> Unpickled:
    check_object_shape(obj)
    return Unpickled(obj, reader.code_globals(), sorted(reader.placeholders))


def _pickle_bytes(data: bytes, what: str) -> bytes:
    if len(data) > MAX_PICKLE_BYTES:
        raise CheckpointError(f"its {what} is {len(data):,} bytes, over the limit")
    return data


def read_zip(path: pathlib.Path) -> Unpickled:
    """Read a zip-format ``torch.save`` file (PyTorch ≥ 1.6), checking every record used."""
    with zipfile.ZipFile(path) as zf:
        infos = {i.filename: i for i in zf.infolist()}
        pickles = [n for n in infos if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise NotTorchSave("is a zip archive without a single data.pkl, not a torch.save file")
        prefix = pickles[0][: -len("data.pkl")]
        order = infos.get(prefix + "byteorder")
        big = order is not None and _read_record(zf, order).strip() == b"big"
        budget = [path.stat().st_size * _INFLATE_FACTOR + _INFLATE_SLACK]

        def load_storage(key: str, dtype: torch.dtype, nbytes: int) -> _Storage:
            info = infos.get(f"{prefix}data/{key}")
            if info is None:
                raise CheckpointError(f"record data/{key} is missing")
            if info.file_size != nbytes:
                raise CheckpointError(
                    f"record data/{key} holds {info.file_size:,} bytes but its tensor "
                    f"storage claims {nbytes:,}"
                )
            budget[0] -= nbytes
            if budget[0] < 0:
                raise CheckpointError("its records claim far more data than the file holds")
            buffer = bytearray(_read_record(zf, info))
            if big and sys.byteorder == "little":
                buffer = _byteswap(buffer, _element_size(dtype))
            return _Storage(_untyped(buffer), dtype)

        reader = _Reader(load_storage)
        data = _pickle_bytes(_read_record(zf, infos[pickles[0]]), "data.pkl")
        return _finish(reader, reader.unpickle(data))


def _read_record(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    try:
        return zf.read(info)
    except zipfile.BadZipFile as exc:
        raise CheckpointError(f"record {info.filename} is damaged ({exc})") from None
    except (NotImplementedError, RuntimeError) as exc:  # unknown compression, encryption
        raise CheckpointError(f"record {info.filename} cannot be read ({exc})") from None


def is_legacy(head: bytes) -> bool:
    """Whether ``head`` starts like the legacy (pre-1.6, non-zip) ``torch.save`` format."""
    return head[:4] == b"\x80\x02\x8a\x0a" and int.from_bytes(head[4:14], "little") == _LEGACY_MAGIC


def read_legacy(path: pathlib.Path) -> Unpickled:
    """Read the legacy format: magic, protocol, system info, the pickle, then the storages."""
    data = path.read_bytes()
    stream = io.BytesIO(data)
    pending: dict[str, bytearray] = {}
    dtypes: dict[str, torch.dtype] = {}

    def load_storage(key: str, dtype: torch.dtype, nbytes: int) -> _Storage:
        claimed = sum(len(b) for b in pending.values()) + nbytes
        if claimed > len(data):
            raise CheckpointError(
                f"its storages claim {claimed:,} bytes but the file holds {len(data):,}: "
                "it is truncated"
            )
        pending[key], dtypes[key] = bytearray(nbytes), dtype
        return _Storage(_untyped(pending[key]), dtype)

    reader = _Reader(load_storage)

    def next_pickle() -> Any:
        return _Unpickler(stream, reader).load()

    if next_pickle() != _LEGACY_MAGIC:
        raise NotTorchSave("does not start with torch's magic number, not a torch.save file")
    next_pickle()  # protocol version
    sys_info = next_pickle()
    big = isinstance(sys_info, Mapping) and sys_info.get("little_endian") is False
    obj = next_pickle()
    keys = next_pickle()
    if not isinstance(keys, list):
        raise CheckpointError("its list of storages is missing")
    for key in keys:
        key = str(key)
        if key not in pending:
            raise CheckpointError(f"it stores data for an unknown storage {key}")
        item = _element_size(dtypes[key])
        head = stream.read(8)
        body = stream.read(len(pending[key]))
        if len(head) < 8 or len(body) < len(pending[key]):
            raise CheckpointError("it is truncated: its tensor data ends early")
        count = struct.unpack("<q" if not big else ">q", head)[0]
        if count * item != len(body):
            raise CheckpointError(
                f"storage {key} holds {count * item:,} bytes but its tensor claims {len(body):,}"
            )
        pending[key][:] = _byteswap(bytearray(body), item) if big else body
    return _finish(reader, obj)


def module_state_dict(root: Placeholder) -> dict[str, Any]:
    """``state_dict()`` of a pickled ``nn.Module`` read as placeholders, without its code:
    parameters, then persistent buffers, then each child, as ``nn.Module`` orders them."""
    out: dict[str, Any] = {}
    seen: set[int] = set()
    stack: list[tuple[str, Any]] = [("", root)]
    while stack:
        prefix, module = stack.pop()
        if id(module) in seen:
            continue
        seen.add(id(module))
        attrs = module.attributes
        for name, value in _entries(attrs.get("_parameters")):
            if value is not None:
                out[prefix + str(name)] = value
        skip = attrs.get("_non_persistent_buffers_set") or set()
        for name, value in _entries(attrs.get("_buffers")):
            if value is not None and name not in skip:
                out[prefix + str(name)] = value
        children = [
            (f"{prefix}{name}.", child)
            for name, child in _entries(attrs.get("_modules"))
            if is_module(child)
        ]
        stack.extend(reversed(children))
    return out


def _entries(value: Any) -> list[tuple[Any, Any]]:
    if isinstance(value, Mapping):
        return list(value.items())
    if isinstance(value, Placeholder):
        return list(value.__dict__["items"].items())
    return []


def is_module(obj: Any) -> bool:
    """Whether a placeholder is a pickled ``nn.Module`` (its state has the module dicts)."""
    if not isinstance(obj, Placeholder):
        return False
    attrs = obj.attributes
    return "_modules" in attrs and "_parameters" in attrs


@contextlib.contextmanager
def quiet_warnings() -> Iterator[None]:
    """Keep torch's and numpy's warnings off stderr while a file is read."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
