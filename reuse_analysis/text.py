"""Results as the command line prints them: one-line summaries, text blocks and the JSON
payloads of ``--json``, each a pure function of a result the library returned.

Scripts that want the same text or JSON as ``reuse-analysis`` call these. Nothing here
imports torch, pandas or matplotlib; DataFrames are used through their own methods only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def records(df: Any) -> list[dict[str, Any]]:
    """A DataFrame's rows as JSON-ready dicts, floats to 15 significant digits."""
    return json.loads(df.to_json(orient="records", double_precision=15))


def to_json(payload: Any) -> str:
    """Indented JSON; paths and other objects as their ``str``."""
    return json.dumps(payload, indent=2, default=str)


def measured(result: Any) -> str:
    """``metric ablation on 1000 train images of cifar10`` (of anything with a ``.table``)."""
    a = result.table.attrs
    on = (
        f" on {a['images']} {a.get('split', '')} images of {a.get('dataset')}"
        if "images" in a
        else ""
    )
    return f"metric {a.get('metric', 'weight')}{on}"


# ----------------------------------------------------------------------------- info
def info_payload(path: Path, structure: Any, checkpoint: Any, order: Any = None) -> dict[str, Any]:
    """What `info --json` prints: the file, how it was stored, the inferred structure and
    (``order``, a :class:`~reuse_analysis.concat_order.OrderDecision`) its concat order
    with what that rests on."""
    return {
        "file": str(path),
        "container": checkpoint.container if checkpoint else None,
        "arch": checkpoint.arch if checkpoint else None,
        "summary": structure.summary(),
        **({"concat_order": order.to_dict()} if order is not None else {}),
        **structure.to_dict(),
        "meta": checkpoint.meta if checkpoint else {},
    }


def info_text(d: dict[str, Any]) -> str:
    """:func:`info_payload` for people: one line per block and its transition/classifier."""
    from reuse_analysis.checkpoint import human_count

    lines = [
        f"{d['file']}: {d['summary']}",
        f"  stored as       {d['container']}" + (f" (arch {d['arch']})" if d["arch"] else ""),
        f"  depth           {d['depth']} weighted layers",
        f"  parameters      {human_count(d['num_parameters'])} ({d['num_parameters']:,})",
        f"  input channels  {d['input_channels'] if d['input_channels'] else 'unknown'}",
        f"  classes         {d['num_classes'] if d['num_classes'] else 'unknown'}",
    ]
    head = d["blocks"][-1]["extra"] if d["blocks"] else None
    if head and head["kind"] == "classifier" and head.get("embedding"):
        lines[-1] = f"  outputs         {d['num_classes']} (an embedding, not classes)"
    if d.get("concat_order"):
        lines.append(f"  concat order    {d['concat_order']['description']}")
    for b in d["blocks"]:
        width = b["bottleneck_width"]
        lines.append(
            f"  block {b['index']}  {b['name'] or '(root)'}: {b['num_layers']} layers, "
            f"k={b['growth_rate']}, {b['in_channels']}→{b['out_channels']} channels, "
            + (f"bottleneck {width}" if width else "no bottleneck")
        )
        extra = b["extra"]
        if extra and extra["kind"] == "transition":
            lines.append(
                f"      transition {extra['name']}: {extra['in_channels']}→"
                f"{extra['out_channels']} channels (θ={extra['compression']:g})"
            )
        elif extra:
            lines += head_lines(extra, b["out_channels"])
    lines += [f"  note: {n}" for n in d["notes"]]
    return "\n".join(lines)


def head_lines(extra: dict[str, Any], channels: int) -> list[str]:
    """The head: which Linear is the classifier column, its layers, its real outputs."""
    positions = extra.get("positions", 1)
    reads = (
        f"{extra['in_features']} features = {channels} channels × {positions} positions of "
        "the flattened map"
        if positions > 1
        else f"{extra['in_features']} pooled features"
    )
    layers = extra.get("head") or [
        {"kind": "linear", "in": extra["in_features"], "out": extra["num_classes"]}
    ]
    chain = " → ".join(
        f"Linear {h['in']}→{h['out']}" if h["kind"] == "linear" else f"BatchNorm1d {h['out']}"
        for h in layers
    )
    outputs = (
        f"{extra['num_classes']} outputs, an embedding ({extra['embedding']})"
        if extra.get("embedding")
        else f"{extra['num_classes']} classes"
    )
    return [
        f"      classifier {extra['name']}: reads {reads} (the classifier column)",
        f"      head            {chain}: {outputs}",
    ]


def traced_payload(path: Path, arch: str, structure: Any) -> dict[str, Any]:
    """What `info --arch A --json` prints: the concatenation groups found by tracing."""
    return {"file": str(path), "arch": arch, **structure.to_dict()}


def traced_text(d: dict[str, Any]) -> str:
    """:func:`traced_payload` for people: one line per group with its targets counted."""
    lines = [f"{d['file']}: {d['summary']}", f"  concat order    {d['concat_order']}"]
    for g in d["groups"]:
        kinds = [t["kind"] for t in g["targets"]]
        counted = ", ".join(
            f"{kinds.count(k)} {k}" + ("es" if k.endswith("ch") else "s") * (kinds.count(k) > 1)
            for k in dict.fromkeys(kinds)
        )
        title = g["title"].replace("\n", " ")
        lines.append(
            f"  group {g['index']} ({g['layout']}) {title}: {len(g['sources'])} sources "
            f"read by {counted}"
        )
    lines += [f"  note: {n}" for n in d["notes"]]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- agreement
def agreement_title(df: Any) -> str:
    """Figure title of the agreement plot (two lines)."""
    a = df.attrs
    return (
        f"{a['model']}: rank agreement with ablation\n({a['images']} {a['split']} images of "
        f"{a['dataset']})"
    )


def agreement_payload(df: Any) -> dict[str, Any]:
    """What `agreement --json` prints: the agreement table with the data it was measured on."""
    a = df.attrs
    return {
        "model": a["model"],
        "reference": "ablation",
        "data": {k: a[k] for k in ("dataset", "split", "images")},
        "concat_order": a.get("concat_order", "oldest-first"),
        "rows": records(df),
    }


# ----------------------------------------------------------------------------- prune
def prune_summary(record: dict[str, Any], metric: str) -> str:
    """One line: what was cut and the test accuracy before, after and after fine-tuning."""
    line = (
        f"cut {record['connections_cut']} of {record['connections']} connections "
        f"({100 * record['share_cut']:.1f} %; {100 * record['bottleneck_inputs_cut']:.1f} % of "
        f"the layers' first-conv input channels) by {metric} (concat order "
        f"{record.get('concat_order_text', 'oldest-first')}); "
        "test accuracy on "
        f"{record['test']['images']} images: {100 * record['accuracy_before']:.2f} % → "
        f"{100 * record['accuracy_pruned']:.2f} %"
    )
    if "finetune" in record:
        line += f" → {100 * record['accuracy_after']:.2f} % after fine-tuning"
    return line


def sweep_title(df: Any) -> str:
    """Figure title of a pruning sweep (two lines): what was measured on how many images."""
    a = df.attrs
    return (
        f"{a['model']}: accuracy after cutting the weakest connections, no fine-tuning\n"
        f"{a['test_images']} test images; data-driven metrics on {a['probe_images']} "
        f"{a['probe_split']} images; scope {a['scope']}; concat order "
        f"{a.get('concat_order_text', 'oldest-first')}"
    )


def sweep_payload(df: Any, summary: Any = None) -> dict[str, Any]:
    """What `prune --sweep --json` prints: the sweep's settings, its rows (one per run: the
    random baseline has one per seed) and ``summary``
    (:func:`reuse_analysis.prune.sweep_summary`: per metric and fraction, the runs and the
    accuracy's mean, sd, min and max)."""
    payload = {**df.attrs, "rows": records(df)}
    if summary is not None:
        payload["summary"] = records(summary)
    return payload


def _percent_spread(row: Any) -> str:
    """``61.25 %``, or ``45.10 % (mean of 5 seeds, 39.58–50.00 %, sd 4.07)``."""
    mean = f"{100 * row.accuracy_mean:.2f} %"
    if row.runs < 2:
        return mean
    return (
        f"{mean} (mean of {row.runs} seeds, {100 * row.accuracy_min:.2f}–"
        f"{100 * row.accuracy_max:.2f} %, sd {100 * row.accuracy_sd:.2f})"
    )


def sweep_lines(summary: Any) -> list[str]:
    """A sweep's text, one line per fraction: the unpruned accuracy, then each metric's
    accuracy after the cut; the random baseline with its mean and spread over seeds."""
    base = summary[summary.metric == "unpruned"]
    lines = [f"unpruned: {100 * base.accuracy_mean.iloc[0]:.2f} %"] if len(base) else []
    rest = summary[summary.metric != "unpruned"]
    for fraction, group in rest.groupby("fraction", sort=False):
        cut = f"{group.connections_cut.iloc[0]:.0f}"
        parts = "; ".join(f"{r.metric} {_percent_spread(r)}" for r in group.itertuples())
        lines.append(f"F = {fraction:g} ({cut} connections cut): {parts}")
    return lines


def dynamics_title(log: str, architecture: str, seeds: int) -> str:
    """Figure title of `dynamics` (two lines): the log, and what the bands are."""
    return (
        f"{log}: reuse statistics per epoch (0 = initialisation)\n"
        f"bands: {seeds} untrained networks of {architecture}, min–max (dotted: mean)"
    )


def dynamics_payload(log: str, table: Any, reference: Any, architecture: Any) -> dict[str, Any]:
    """What `dynamics --json` prints: the log, the architecture of the untrained reference
    and where it was found, per statistic the untrained seeds' mean, sd, min and max, and
    the rows per epoch."""
    stats = {r.pop("statistic"): r for r in records(reference.reset_index())}
    return {
        "log": log,
        "architecture": architecture.to_dict(),
        "untrained": {"seeds": reference.attrs["seeds"], "statistics": stats},
        "epochs": records(table),
    }


def compare_payload(df: Any, table: Path, figure: Path) -> dict[str, Any]:
    """What `compare --json` prints: the files written, the setting and the rows."""
    return {"table": str(table), "figure": str(figure), **df.attrs, "rows": records(df)}


# ----------------------------------------------------------------------------- train, evaluate
def evaluation_line(path: Path, result: dict[str, Any]) -> str:
    """`evaluate`'s line: accuracy, error and loss on how many images of which data set."""
    return (
        f"{path}: top-1 accuracy {100 * result['accuracy']:.2f} % "
        f"(error {100 * (1 - result['accuracy']):.2f} %), loss {result['loss']:.4f} "
        f"on {result['images']} images of {result['dataset']}"
    )


def training_line(summary: dict[str, Any]) -> str:
    """`train`'s closing note: epochs, final test accuracy and error, training time."""
    acc = summary["test_acc"]
    return (
        f"done: {summary['epochs']} epochs, test accuracy {100 * acc:.2f} % "
        f"(error {100 * (1 - acc):.2f} %), {summary['seconds'] / 60:.1f} min of training"
    )


def card_line(card: dict[str, Any]) -> str:
    """`card`'s note: the accuracy the card records."""
    return f"test accuracy {100 * card['test_accuracy']:.2f} % on {card['test_images']} images"


# ----------------------------------------------------------------------------- models
def models_text(entries: list[dict[str, Any]]) -> str:
    """The `models` table: name, parameters in millions (the paper's beside), input, classes."""
    header = ("name", "params", "paper", "input", "classes", "description")
    rows = [
        (
            e["name"],
            f"{e['parameters'] / 1e6:.2f}M",
            f"{e['paper_parameters_m']:.1f}M" if e["paper_parameters_m"] else "",
            f"{e['in_channels']}×{e['input_size']}×{e['input_size']}",
            str(e["num_classes"]),
            e["description"],
        )
        for e in entries
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1]
        for r in [header, *rows]
    )


def order_text(attrs: Mapping[str, Any]) -> str:
    """``oldest-first (detected: 36 of 36 batch-norm pairs, 0 against)`` for notes and
    titles: the order and what it rests on, as the analysis described it."""
    if attrs.get("concat_order_text"):
        return str(attrs["concat_order_text"])
    basis = attrs.get("concat_order_basis")
    return f"{attrs['concat_order']}, {basis}" if basis else str(attrs["concat_order"])


def order_payload(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """The concat order, how it was chosen and the evidence, for JSON outputs."""
    return {
        "order": attrs["concat_order"],
        "basis": attrs.get("concat_order_basis"),
        "evidence": attrs.get("concat_order_evidence"),
        "description": order_text(attrs),
    }


def redundancy_lines(model: str, summary: str, order: str, reds: Any, pca: Any) -> list[str]:
    """The `redundancy` command's text: per transition the read-in's and the transition
    conv's rank fraction against untrained networks, and θ' (or why there is none)."""
    lines = [f"{model}: {summary} (concat order {order})"]
    if not reds:
        lines.append("  no transition layer")
    for r in reds:
        lines.append(f"  transition {r.describe()}")
        if r.transition in pca:
            a = pca[r.transition]
            lines.append(
                f"    on {a.images} images: {a.fraction:.2f} of the channels' principal "
                f"components hold 90 % of the variance (untrained {a.untrained_mean:.2f} ± "
                f"{a.untrained_sd:.3f})"
            )
    return lines


def redundancy_json(model: str, summary: str, order: Mapping[str, Any], reds: Any, pca: Any) -> str:
    """`redundancy --json`: per transition the measures, θ' and the untrained reference."""
    transitions = [
        {**r.to_dict(), "activation_pca": pca[r.transition].to_dict()}
        if r.transition in pca
        else r.to_dict()
        for r in reds
    ]
    payload = {"model": model, "structure": summary, "concat_order": dict(order)}
    return json.dumps({**payload, "transitions": transitions}, indent=2)
