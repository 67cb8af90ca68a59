"""Reuse analysis of any network whose layers read a ``torch.cat`` of earlier tensors,
found by tracing the model (torch.fx) instead of reading weight names.

The model is traced symbolically and run once on an example input to learn every
tensor's channel count. Each tensor then gets a *provenance*: the list of earlier
tensors ("sources") its channels come from, in order. A concatenation along the
channels joins its inputs' provenances (nested concatenations flatten, so d2l's
``X = torch.cat((X, Y), 1)`` loop gives the same sources as torchvision's single
``torch.cat(features, 1)``); channel-preserving operations (normalisation, activations,
dropout, pooling, flattening a 1×1 map …) pass it on unchanged; any other operation
starts a new source. A convolution or linear layer whose input has a provenance is a
*target*; it gives source ``s`` the mean |w| of its weights on ``s``'s channels — the
same ``w(s, t)`` as :mod:`reuse_analysis.metrics`.

Targets that read overlapping sets of sources form a *group*. Two layouts occur:

* ``dense``: the targets read growing prefixes of the sources (a dense block): target
  ``t`` reads sources ``0..t-1`` and the last target(s), reading them all, are the
  transition or the classifier. Numbered exactly like the weight-name analysis, so
  DenseNets give the same table either way.
* ``matrix``: anything else, e.g. the four branches of an Inception block, each of whose
  first convolutions reads all four branches of the block before. Every target is a
  column; the matrix is not triangular.

The result is the tidy table of :func:`reuse_analysis.metrics.reuse_table` (columns
:data:`~reuse_analysis.metrics.COLUMNS`), with ``attrs["layout"]``,
``attrs["source_labels"]``, ``attrs["target_labels"]`` and ``attrs["block_titles"]``
per group for plotting.
"""

from __future__ import annotations

import operator
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import fx, nn

from reuse_analysis.analysis import Analysis
from reuse_analysis.checkpoint import LoadedCheckpoint, check_finite, load_checkpoint
from reuse_analysis.errors import ReuseAnalysisError, StructureError
from reuse_analysis.metrics import channel_usage
from reuse_analysis.tables import build_table

DEFAULT_INPUT_SIZE = 32

# Modules that keep channel c of their output a function of channel c of their input.
_PASS_MODULES: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardtanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Softplus,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
    nn.Identity,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
    nn.LPPool2d,
    nn.ZeroPad2d,
    nn.ConstantPad2d,
    nn.ReflectionPad2d,
    nn.ReplicationPad2d,
    nn.Upsample,
    nn.Flatten,  # only where the channel axis survives (checked on the shapes)
)
_PASS_FUNCTIONS: set[Any] = {
    F.relu,
    F.relu_,
    torch.relu,
    torch.relu_,
    F.relu6,
    F.leaky_relu,
    F.elu,
    F.selu,
    F.gelu,
    F.silu,
    F.mish,
    F.hardswish,
    F.hardsigmoid,
    F.hardtanh,
    torch.sigmoid,
    torch.tanh,
    F.dropout,
    F.dropout1d,
    F.dropout2d,
    F.dropout3d,
    F.batch_norm,
    F.instance_norm,
    F.group_norm,
    F.max_pool1d,
    F.max_pool2d,
    F.max_pool3d,
    F.avg_pool1d,
    F.avg_pool2d,
    F.avg_pool3d,
    F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d,
    F.adaptive_avg_pool3d,
    F.adaptive_max_pool1d,
    F.adaptive_max_pool2d,
    F.adaptive_max_pool3d,
    F.pad,
    F.interpolate,
    torch.flatten,
}
_PASS_METHODS = {
    "relu",
    "relu_",
    "sigmoid",
    "tanh",
    "contiguous",
    "clone",
    "detach",
    "float",
    "to",
    "flatten",
    "view",
    "reshape",
}
# Arithmetic with a plain number (scaling, shifting) keeps the channels too.
_SCALAR_OPS = {operator.mul, operator.add, operator.sub, operator.truediv, torch.mul, torch.add}
_CAT_FUNCTIONS = {torch.cat, torch.concat, torch.concatenate}
_CONV_FUNCTIONS = {F.conv1d, F.conv2d, F.conv3d, torch.conv1d, torch.conv2d, torch.conv3d}


# ----------------------------------------------------------------------------- data model
@dataclass(frozen=True)
class TracedSource:
    """A tensor whose channels reach a target through concatenations (row ``index``)."""

    index: int  # 0-based row of the group; topological order (creation order)
    name: str  # module path of the layer that made it, or the graph node's name
    channels: int
    label: str  # short name for plots, e.g. "b2" for an Inception branch


@dataclass(frozen=True)
class TracedTarget:
    """A convolution or linear layer reading (some of) a group's sources."""

    index: int  # 1-based column of the group
    name: str  # module path of the layer
    weight_key: str  # its weight's name in the model's state_dict
    kind: str  # layer | transition | classifier | branch
    #: ``(source, start, stop)``: which input channels of the layer came from which source.
    slices: tuple[tuple[int, int, int], ...]
    label: str

    @property
    def source_indices(self) -> list[int]:
        return sorted({s for s, _, _ in self.slices})


@dataclass(frozen=True)
class ConcatGroup:
    """Targets that read overlapping concatenations of the same sources."""

    index: int  # 1-based, forward order: the table's ``block``
    layout: str  # "dense" (a dense block) or "matrix" (e.g. Inception branches)
    sources: tuple[TracedSource, ...]
    targets: tuple[TracedTarget, ...]
    title: str

    @property
    def num_layers(self) -> int:
        return sum(t.kind == "layer" for t in self.targets)


@dataclass(frozen=True)
class TracedStructure:
    """What tracing found: the concatenation groups of a model, in forward order."""

    model: str  # the model's class name
    groups: tuple[ConcatGroup, ...]
    concat_order: str  # oldest-first | newest-first | mixed | n/a (no dense group)
    input_shape: tuple[int, ...]
    num_parameters: int
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def dense_groups(self) -> tuple[ConcatGroup, ...]:
        return tuple(g for g in self.groups if g.layout == "dense")

    def summary(self) -> str:
        """One line, e.g. ``DenseNet, traced: 3 dense blocks (16-16-16 layers)``."""
        parts = []
        dense = self.dense_groups
        if dense:
            sizes = "-".join(str(g.num_layers) for g in dense)
            parts.append(f"{len(dense)} dense block{'s' * (len(dense) > 1)} ({sizes} layers)")
        matrix = [g for g in self.groups if g.layout == "matrix"]
        if matrix:
            shapes = sorted({f"{len(g.sources)}→{len(g.targets)}" for g in matrix})
            parts.append(
                f"{len(matrix)} concatenation{'s' * (len(matrix) > 1)} read by parallel "
                f"layers ({', '.join(shapes)} sources→targets)"
            )
        return f"{self.model}, traced: " + "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description."""
        return {
            "model": self.model,
            "summary": self.summary(),
            "concat_order": self.concat_order,
            "input_shape": list(self.input_shape),
            "num_parameters": self.num_parameters,
            "groups": [
                {
                    "index": g.index,
                    "layout": g.layout,
                    "title": g.title,
                    "sources": [
                        {"index": s.index, "name": s.name, "channels": s.channels}
                        for s in g.sources
                    ],
                    "targets": [
                        {
                            "index": t.index,
                            "name": t.name,
                            "kind": t.kind,
                            "weight": t.weight_key,
                            "sources": t.source_indices,
                        }
                        for t in g.targets
                    ],
                }
                for g in self.groups
            ],
            "notes": list(self.notes),
        }


# ----------------------------------------------------------------------------- tracing
def _shape(node: fx.Node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    shape = getattr(meta, "shape", None)
    return tuple(shape) if shape is not None else None


def _channels(node: fx.Node) -> int | None:
    shape = _shape(node)
    return shape[1] if shape is not None and len(shape) >= 2 else None


def _first_input(node: fx.Node) -> fx.Node | None:
    arg = node.args[0] if node.args else node.kwargs.get("input")
    return arg if isinstance(arg, fx.Node) else None


def _keeps_channels(node: fx.Node, inp: fx.Node) -> bool:
    """Same batch and channel count in and out (flattening a 1×1 map, say, but not 7×7)."""
    a, b = _shape(inp), _shape(node)
    return a is not None and b is not None and len(a) >= 2 and len(b) >= 2 and a[:2] == b[:2]


def _passes_from(node: fx.Node, modules: Mapping[str, nn.Module]) -> fx.Node | None:
    """The input whose channels ``node`` passes on one to one, or None."""
    inp = _first_input(node)
    if inp is None:
        return None
    if node.op == "call_module":
        ok = isinstance(modules.get(str(node.target)), _PASS_MODULES)
    elif node.op == "call_function" and node.target in _SCALAR_OPS:
        others = [a for a in node.args[1:]] + list(node.kwargs.values())
        ok = len(node.args) == 2 and all(isinstance(a, (int, float)) for a in others)
    elif node.op == "call_function":
        ok = node.target in _PASS_FUNCTIONS
    elif node.op == "call_method":
        ok = node.target in _PASS_METHODS or (node.target == "mean" and _spatial_mean(node))
    else:
        ok = False
    return inp if ok and _keeps_channels(node, inp) else None


def _spatial_mean(node: fx.Node) -> bool:
    """``x.mean(dims)`` over spatial dims only (not the batch or channel axis)."""
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    shape = _shape(_first_input(node))
    if dims is None or shape is None:
        return False
    dims = [dims] if isinstance(dims, int) else list(dims)
    return all(isinstance(d, int) and d % len(shape) >= 2 for d in dims)


def _cat_inputs(node: fx.Node) -> list[fx.Node] | None:
    """The inputs of a concatenation along the channel axis, or None."""
    if node.op != "call_function" or node.target not in _CAT_FUNCTIONS:
        return None
    tensors = node.args[0] if node.args else node.kwargs.get("tensors")
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    shape = _shape(node)
    if shape is None or not isinstance(tensors, (list, tuple)):
        return None
    if not isinstance(dim, int) or dim % len(shape) != 1:
        return None
    if not all(isinstance(t, fx.Node) for t in tensors):
        return None
    return list(tensors)


@dataclass(frozen=True)
class _Reader:
    """A convolution or linear layer and where its input channels came from."""

    node: fx.Node
    name: str
    weight_key: str
    weight: torch.Tensor
    is_linear: bool
    roots: tuple[fx.Node, ...]  # source of each segment, in channel order
    widths: tuple[int, ...]  # channels of each segment


def _reader(node: fx.Node, gm: fx.GraphModule) -> tuple[str, str, torch.Tensor, bool] | None:
    """``(name, weight key, weight, is_linear)`` if ``node`` is an ungrouped conv or linear."""
    if node.op == "call_module":
        module = gm.get_submodule(str(node.target))
        name = str(node.target)
        if isinstance(module, nn.Linear):
            return name, f"{name}.weight", module.weight, True
        conv = isinstance(module, nn.modules.conv._ConvNd) and not module.transposed
        if conv and module.groups == 1:
            return name, f"{name}.weight", module.weight, False
        return None
    if node.op == "call_function" and node.target in (F.linear, *_CONV_FUNCTIONS):
        weight = node.args[1] if len(node.args) > 1 else node.kwargs.get("weight")
        groups = node.args[6] if len(node.args) > 6 else node.kwargs.get("groups", 1)
        if isinstance(weight, fx.Node) and weight.op == "get_attr" and groups == 1:
            key = str(weight.target)
            name = key.removesuffix(".weight")
            return name, key, gm.get_parameter(key), node.target is F.linear
    return None


def _node_name(node: fx.Node) -> str:
    return str(node.target) if node.op == "call_module" else node.name


class _Tracer(fx.Tracer):
    """torch.fx's tracer, except that a module built inside ``forward`` (``Head()(x)``),
    which has no name in the model, is traced through instead of refused."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        # A bare nn.Module (with a forward assigned to it) is a container like Sequential.
        if type(m) in (nn.Module, nn.ModuleList, nn.ModuleDict):
            return False
        return super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m: nn.Module, forward: Any, args: tuple, kwargs: dict) -> Any:
        try:
            self.path_of_module(m)
        except NameError:
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)


def _trace(
    model: nn.Module, example: torch.Tensor | None, input_size: int | None
) -> tuple[fx.GraphModule, torch.Tensor]:
    """Symbolic trace plus one real forward in eval mode, leaving the model as it was.

    Without an ``example``, a random ``1×C×S×S`` image is made for the first convolution
    the graph runs (S: ``input_size``, default 32).
    """
    name = type(model).__name__
    try:
        graph = _Tracer().trace(model)
        gm = fx.GraphModule(model, graph, class_name=name)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StructureError(
            f"{name} could not be traced with torch.fx ({first[:200]}); the traced analysis "
            "needs a forward without data-dependent control flow"
        ) from None
    if example is None:
        example = _example_for(gm, input_size)
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            from torch.fx.passes.shape_prop import ShapeProp

            ShapeProp(gm).propagate(example)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StructureError(
            f"running {name} on an example input of shape {list(example.shape)} failed "
            f"({first[:200]}); give the input size the model expects (--input-size)"
        ) from None
    finally:
        for m, training in modes.items():
            m.training = training
    return gm, example


def _example_for(gm: fx.GraphModule, input_size: int | None) -> torch.Tensor:
    """A random image for the first convolution in execution order (seeded: reproducible)."""
    first = None
    for node in gm.graph.nodes:
        found = _reader(node, gm)
        if found is not None and not found[3]:
            first = found[2]
            break
    if first is None:
        raise StructureError(f"{gm.__class__.__name__} runs no convolution to read images with")
    size = input_size or DEFAULT_INPUT_SIZE
    spatial = (size,) * (first.dim() - 2)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, first.shape[1], *spatial, generator=generator)
    return x.to(device=first.device, dtype=first.dtype)


def _readers(gm: fx.GraphModule) -> tuple[list[_Reader], dict[fx.Node, int], int]:
    """Every conv/linear with the sources of its input; topological positions; cat count."""
    modules = dict(gm.named_modules())
    provenance: dict[fx.Node, list[fx.Node]] = {}
    position: dict[fx.Node, int] = {}
    readers: list[_Reader] = []
    cats = 0

    def roots_of(node: fx.Node) -> list[fx.Node]:
        return provenance.get(node, [node])

    for pos, node in enumerate(gm.graph.nodes):
        position[node] = pos
        parts = _cat_inputs(node)
        if parts is not None:
            cats += 1
            provenance[node] = [r for p in parts for r in roots_of(p)]
            continue
        passed = _passes_from(node, modules)
        if passed is not None:
            provenance[node] = roots_of(passed)
            continue
        found = _reader(node, gm)
        inp = _first_input(node)
        if found is None or inp is None:
            continue
        roots = roots_of(inp)
        widths = [_channels(r) for r in roots]
        if any(w is None for w in widths):
            continue
        name, key, weight, is_linear = found
        if sum(widths) != weight.shape[1]:
            continue  # e.g. a linear layer reading a flattened map: not one input per channel
        readers.append(_Reader(node, name, key, weight, is_linear, tuple(roots), tuple(widths)))
    return readers, position, cats


def _groups_of(readers: Sequence[_Reader]) -> list[list[_Reader]]:
    """Readers joined by shared sources; only groups where something reads a concatenation."""
    parent: dict[fx.Node, fx.Node] = {}

    def find(n: fx.Node) -> fx.Node:
        while parent.setdefault(n, n) is not n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n

    multi = [r for r in readers if len(set(r.roots)) > 1]
    for r in multi:
        first = find(r.roots[0])
        for root in r.roots[1:]:
            parent[find(root)] = first
    grouped: dict[fx.Node, list[_Reader]] = {}
    concatenated = {find(r.roots[0]) for r in multi}
    for r in readers:
        key = find(r.roots[0])
        if key in concatenated and all(find(x) is key for x in r.roots):
            grouped.setdefault(key, []).append(r)
    return list(grouped.values())


def _short_labels(names: Sequence[str]) -> list[str]:
    """Names without their common dotted prefix, cut to the first part where that is unique."""
    if len(names) == 1:
        return [names[0].rsplit(".", 1)[-1]]
    split = [n.split(".") for n in names]
    common = 0
    while all(len(s) > common + 1 for s in split) and len({s[common] for s in split}) == 1:
        common += 1
    rest = [s[common:] for s in split]
    firsts = [r[0] for r in rest]
    if len(set(firsts)) == len(firsts):
        return firsts
    return [".".join(r) for r in rest]


def _common_prefix(names: Sequence[str]) -> str:
    split = [n.split(".") for n in names]
    out = []
    for parts in zip(*split, strict=False):
        if len(set(parts)) != 1:
            break
        out.append(parts[0])
    if len(names) == 1:
        out = split[0][:-1] or split[0]
    return ".".join(out)


def _matrix_title(sources: Sequence[str], targets: Sequence[str]) -> str:
    a, b = _common_prefix(sources), _common_prefix(targets)
    shared = _common_prefix([a, b]) if a and b else ""
    if shared and shared not in (a, b):
        a, b = a[len(shared) + 1 :], b[len(shared) + 1 :]
    elif not shared:  # e.g. features.inception5b → classifier: the containers say little
        a, b = a.rsplit(".", 1)[-1], b.rsplit(".", 1)[-1]
    return f"{a or 'input'}\n→ {b or 'output'}"


def _group(
    index: int, readers: Sequence[_Reader], position: Mapping[fx.Node, int]
) -> tuple[ConcatGroup, list[str]]:
    """Number a group's sources (creation order) and targets; decide its layout."""
    roots = sorted({r for reader in readers for r in reader.roots}, key=position.__getitem__)
    row = {root: i for i, root in enumerate(roots)}
    reads = [sorted({row[r] for r in reader.roots}) for reader in readers]
    n = len(roots)
    prefixes = all(rs == list(range(len(rs))) for rs in reads)
    layer_sizes = sorted(len(rs) for rs in reads if len(rs) < n)
    dense = prefixes and n > 1 and layer_sizes == list(range(1, n))
    if dense:
        order = sorted(
            range(len(readers)), key=lambda i: (len(reads[i]), position[readers[i].node])
        )
    else:
        order = sorted(range(len(readers)), key=lambda i: position[readers[i].node])
    orders = []
    targets = []
    target_labels = _short_labels([readers[i].name for i in order])
    for column, (i, label) in enumerate(zip(order, target_labels, strict=True), start=1):
        reader = readers[i]
        slices, start = [], 0
        for root, width in zip(reader.roots, reader.widths, strict=True):
            slices.append((row[root], start, start + width))
            start += width
        if len(slices) > 1:
            sequence = [s for s, _, _ in slices]
            orders.append(
                "oldest-first"
                if sequence == sorted(sequence)
                else "newest-first"
                if sequence == sorted(sequence, reverse=True)
                else "mixed"
            )
        if reader.is_linear:
            kind = "classifier"
        elif not dense:
            kind = "branch"
        else:
            kind = "layer" if len(reads[i]) < n else "transition"
        targets.append(
            TracedTarget(column, reader.name, reader.weight_key, kind, tuple(slices), label)
        )
    source_names = [_node_name(r) for r in roots]
    source_labels = _short_labels(source_names)
    sources = tuple(
        TracedSource(i, name, int(_channels(root) or 0), label)
        for i, (root, name, label) in enumerate(
            zip(roots, source_names, source_labels, strict=True)
        )
    )
    title = (
        f"Dense Block {index}"
        if dense
        else _matrix_title(source_names, [readers[i].name for i in order])
    )
    layout = "dense" if dense else "matrix"
    return ConcatGroup(index, layout, sources, tuple(targets), title), orders


def _overall_order(orders: Sequence[str]) -> str:
    kinds = set(orders)
    if not kinds:
        return "n/a"
    return kinds.pop() if len(kinds) == 1 else "mixed"


def trace_structure(
    model: nn.Module, example: torch.Tensor | None = None, *, input_size: int | None = None
) -> TracedStructure:
    """Trace ``model`` and find every group of layers reading concatenations.

    ``example`` is one input batch; by default a random image of side ``input_size``
    (32) with the channels the first convolution reads. Raises StructureError when the
    model cannot be traced or reads no concatenation.
    """
    gm, example = _trace(model, example, input_size)
    readers, position, cats = _readers(gm)
    found = _groups_of(readers)
    name = type(model).__name__
    if not found:
        what = (
            f"none of its {cats} channel concatenations feeds a convolution or linear layer"
            if cats
            else "it has no torch.cat along the channels at all"
        )
        raise StructureError(
            f"{name} reads no concatenation of earlier layers ({what}); only densely "
            "connected or branching networks can be analysed (a ResNet adds its shortcuts "
            "instead of concatenating them)"
        )
    found.sort(key=lambda g: min(position[r.node] for r in g))
    groups, dense_orders = [], []
    for i, readers_of_group in enumerate(found, start=1):
        group, orders = _group(i, readers_of_group, position)
        groups.append(group)
        if group.layout == "dense":
            dense_orders += orders
    notes = []
    grouped_convs = [
        n
        for n, m in model.named_modules()
        if isinstance(m, nn.modules.conv._ConvNd) and (m.groups > 1 or m.transposed)
    ]
    if grouped_convs:
        notes.append(
            f"{len(grouped_convs)} grouped or transposed convolution(s) are not analysed "
            f"(e.g. {grouped_convs[0]})"
        )
    return TracedStructure(
        model=name,
        groups=tuple(groups),
        concat_order=_overall_order(dense_orders),
        input_shape=tuple(example.shape),
        num_parameters=sum(p.numel() for p in model.parameters()),
        notes=tuple(notes),
    )


# ----------------------------------------------------------------------------- the table
def _weight_of(model: nn.Module, target: TracedTarget) -> torch.Tensor:
    """The weight a target multiplies its input with (also when it is re-parametrised, as
    with weight norm, and so not a parameter of its own)."""
    try:
        return model.get_parameter(target.weight_key)
    except AttributeError:
        return model.get_submodule(target.name).weight


def traced_table(model: nn.Module, structure: TracedStructure) -> pd.DataFrame:
    """The reuse table of a traced structure: columns :data:`COLUMNS`, one row per
    (group, source, target) where the target reads the source."""
    rows = []
    for group in structure.groups:
        for target in group.targets:
            usage = channel_usage(_weight_of(model, target))
            for source in target.source_indices:
                channels = np.concatenate([usage[a:b] for s, a, b in target.slices if s == source])
                rows.append(
                    (group.index, source, target.index, target.kind, float(channels.mean()))
                )
    order = structure.concat_order
    return build_table(
        rows,
        "weight",
        concat_order=f"{order} (traced)" if order != "n/a" else "traced",
        structure=structure.summary(),
        attrs={
            "concat_order_basis": "read from the traced graph",
            "layout": {g.index: g.layout for g in structure.groups},
            "source_labels": {g.index: [s.label for s in g.sources] for g in structure.groups},
            "target_labels": {g.index: [t.label for t in g.targets] for g in structure.groups},
            "block_titles": {g.index: g.title for g in structure.groups},
        },
    )


def traced_channel_usage(model: nn.Module, structure: TracedStructure) -> pd.DataFrame:
    """Per dense group and channel of its input ``x_0``: the mean |w| its layers give it
    (:func:`reuse_analysis.metrics.input_channel_usage` for a traced structure)."""
    frames = []
    for group in structure.dense_groups:
        per_layer = []
        for target in group.targets:
            if target.kind == "layer":
                usage = channel_usage(_weight_of(model, target))
                per_layer.append(
                    np.concatenate([usage[a:b] for s, a, b in target.slices if s == 0])
                )
        if per_layer:
            usage = np.mean(per_layer, axis=0)
            frames.append(
                pd.DataFrame(
                    {"block": group.index, "channel": np.arange(len(usage)), "usage": usage}
                )
            )
    return (
        pd.concat(frames, ignore_index=True)
        if frames
        else pd.DataFrame({"block": [], "channel": [], "usage": []})
    )


def traced_compressions(model: nn.Module, structure: TracedStructure) -> dict[int, float]:
    """Dense group index → θ (output ÷ input channels) of the transition that reads it."""
    out = {}
    for group in structure.dense_groups:
        transition = next((t for t in group.targets if t.kind == "transition"), None)
        if transition is not None:
            w = _weight_of(model, transition)
            out[group.index] = w.shape[0] / w.shape[1]
    return out


# ----------------------------------------------------------------------------- from files
def _size_overrides(name: str, state_dict: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """``in_channels``/``num_classes`` of a registered architecture, read off the weights."""
    from reuse_analysis.models import create_model

    with torch.device("meta"):
        reference = create_model(name)
    convs = [(n, m) for n, m in reference.named_modules() if isinstance(m, nn.Conv2d)]
    linears = [(n, m) for n, m in reference.named_modules() if isinstance(m, nn.Linear)]
    out: dict[str, int] = {}
    first = f"{convs[0][0]}.weight" if convs else None
    if first in state_dict and state_dict[first].dim() == 4:
        out["in_channels"] = int(state_dict[first].shape[1])
    head = f"{(linears or convs)[-1][0]}.weight" if (linears or convs) else None
    if head in state_dict:
        out["num_classes"] = int(state_dict[head].shape[0])
    return out


def build_for_weights(
    arch: str,
    state_dict: Mapping[str, torch.Tensor],
    checkpoint: LoadedCheckpoint | None = None,
) -> nn.Module:
    """The model ``arch`` names (registered name or ``module:function``) with the weights
    loaded strictly; sizes of a registered model follow the weights (or the file's config)."""
    from reuse_analysis.models import MODELS, build_model_spec, create_model, model_from_config

    try:
        if arch in MODELS:
            if checkpoint is not None and checkpoint.arch == arch and checkpoint.config:
                model = model_from_config(checkpoint.config, arch=arch)
            else:
                model = create_model(arch, **_size_overrides(arch, state_dict))
        elif ":" in arch:
            model = build_model_spec(arch)
        else:
            raise ValueError(
                f"unknown architecture {arch!r}: give a registered name "
                f"({', '.join(MODELS)}) or module:function returning an nn.Module"
            )
    except (ValueError, TypeError) as exc:
        raise ReuseAnalysisError(str(exc)) from None
    load_strict(model, state_dict, arch)
    return model


def load_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], arch: str) -> None:
    """``load_state_dict(strict=True)`` with one line saying what does not fit."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"{k} is {list(state_dict[k].shape)} in the file, {list(v.shape)} in the model"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing ({', '.join(missing[:2])}…)")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected ({', '.join(unexpected[:2])}…)")
    if mismatched:
        problems.append(f"{len(mismatched)} of other shape ({mismatched[0]})")
    if problems:
        raise ReuseAnalysisError(
            f"the weights do not fit {arch}: {'; '.join(problems)}; check --arch "
            "(and its num_classes/in_channels) against the file"
        )
    model.load_state_dict(dict(state_dict), strict=True)


def analyze_traced(
    source: str | os.PathLike[str] | Mapping[str, torch.Tensor] | nn.Module,
    arch: str | None = None,
    *,
    input_size: int | None = None,
    trust_pickle: bool = False,
    name: str | None = None,
) -> Analysis:
    """Trace a model and compute its reuse table: the same :class:`Analysis` as
    :func:`reuse_analysis.analysis.analyze` gives, with a :class:`TracedStructure`.

    ``source`` is a model (``arch`` None), or a checkpoint path or state_dict whose weights
    are loaded into the model ``arch`` names: a registered architecture (sized from the
    weights) or ``module:function``.
    """
    checkpoint = None
    if isinstance(source, nn.Module):
        model = source
        name = name or type(source).__name__
    else:
        if arch is None:
            raise ReuseAnalysisError("the traced analysis of a weight file needs --arch")
        if isinstance(source, (str, os.PathLike)):
            checkpoint = load_checkpoint(source, trust_pickle=trust_pickle)
            state_dict = checkpoint.state_dict
            name = name or Path(checkpoint.path).stem
            if input_size is None:
                recorded = checkpoint.meta.get("dataset", {})
                input_size = recorded.get("image_size") if isinstance(recorded, dict) else None
        else:
            state_dict = dict(source)
            name = name or "state_dict"
        check_finite(state_dict)
        model = build_for_weights(arch, state_dict, checkpoint)
    structure = trace_structure(model, input_size=input_size)
    table = traced_table(model, structure)
    table.attrs["model"] = name
    return Analysis(
        table,
        structure,
        name,
        checkpoint,
        dict(model.state_dict()),
        model,
        compressions=traced_compressions(model, structure),
        _usage=lambda: traced_channel_usage(model, structure),
    )
