"""Damaged and hostile files: one ``Error:`` line, exit 2, nothing on stdout, no output.

Each case is built here from a small DenseNet whose table is computed by hand; files
that should load are checked against those numbers, files that should not against the
contract a user relies on (and, for files carrying code, that the code did not run).
"""

from __future__ import annotations

import collections
import datetime
import errno
import io
import json
import os
import pickle
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from layouts import AttrBlocksNet

from reuse_analysis.cli import cli

# Building a quantized tensor warns that torch deprecates them; reading one is the test.
pytestmark = pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor")
ROOT = Path(__file__).resolve().parents[1]
C0, K, LAYERS, CLASSES = 8, 4, (2, 2), 3


@pytest.fixture(scope="module")
def sd():
    """A plain DenseNet (bearpaw names): two blocks of two layers, k=4, 8 input channels."""
    torch.manual_seed(0)
    model = AttrBlocksNet(
        k=K, layers=LAYERS, c0=C0, width=0, classes=CLASSES, trans_names=("bn1", "conv1"), fc="fc"
    )
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def hand_table(sd):
    """``{(block, source, target): mean |w|}`` straight from the slices of each weight."""
    rows, cin = {}, C0
    for b, n in enumerate(LAYERS, start=1):
        last = sd[f"trans{b}.conv1.weight"] if b < len(LAYERS) else sd["fc.weight"]
        targets = [sd[f"dense{b}.{i}.conv1.weight"] for i in range(n)] + [last]
        for t, w in enumerate(targets, start=1):
            for s in range(t):
                cols = slice(0, cin) if s == 0 else slice(cin + K * (s - 1), cin + K * s)
                rows[(b, s, t)] = w[:, cols].abs().double().mean().item()
        cin = (cin + n * K) // 2
    return rows


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def table_of(path, *extra):
    result = run("table", path, *extra)
    assert result.exit_code == 0, result.stderr
    df = pd.read_csv(io.StringIO(result.stdout))
    return {(r.block, r.source, r.target): r.mean_abs_weight for r in df.itertuples()}


def assert_table(got, sd):
    want = hand_table(sd)
    assert set(got) == set(want)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-6), key


def assert_refused(result, *fragments, output=None):
    """The bad-input contract: one Error line naming the problem, exit 2, no output."""
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "weights_only=False" not in lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    if output is not None:
        assert not output.exists()
        assert not list(output.parent.glob(f".{output.name}*")), "temporary file left"
    return lines[0]


def refused(path, *fragments, tmp_path=None):
    out = (tmp_path or Path(path).parent) / "out.csv"
    return assert_refused(run("table", path, "-o", out), *fragments, output=out)


def save(obj, path, **kw):
    torch.save(obj, path, **kw)
    return path


def rewrite_zip(src, dst, change=lambda name, data: data, compression=zipfile.ZIP_STORED):
    """Copy a zip record by record, passing each record's bytes through ``change``."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", compression) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, change(info.filename, zin.read(info)))
    return dst


def record_offset(path, name):
    """Where the bytes of zip record ``name`` start in the file."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(name)
    raw = Path(path).read_bytes()
    header = info.header_offset
    name_len = int.from_bytes(raw[header + 26 : header + 28], "little")
    extra_len = int.from_bytes(raw[header + 28 : header + 30], "little")
    return header + 30 + name_len + extra_len, info.file_size


# ---------------------------------------------------------------- files that load


def test_reference_file_matches_hand_computed_table(tmp_path, sd):
    assert_table(table_of(save(sd, tmp_path / "m.pt")), sd)


def test_redeflated_zip_loads_the_same_values(tmp_path, sd):
    path = rewrite_zip(save(sd, tmp_path / "m.pt"), tmp_path / "deflated.pt", compression=8)
    with zipfile.ZipFile(path) as zf:
        assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_DEFLATED}
    assert_table(table_of(path), sd)


def test_legacy_format_and_pickle_protocol_5(tmp_path, sd):
    legacy = save(sd, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    assert_table(table_of(legacy), sd)
    assert_table(table_of(save(sd, tmp_path / "p5.pt", pickle_protocol=5)), sd)


def test_small_expanded_view_is_analysed_from_its_values(tmp_path, sd):
    """A classifier whose rows all share one stored row: a view, analysed as the values."""
    row = torch.linspace(-1.0, 1.0, sd["fc.weight"].shape[1])
    expanded = dict(sd, **{"fc.weight": row.expand(CLASSES, -1)})
    assert expanded["fc.weight"].stride()[0] == 0
    path = save(expanded, tmp_path / "expanded.pt")
    assert_table(table_of(path), dict(sd, **{"fc.weight": row.expand(CLASSES, -1).clone()}))


def test_refused_tensor_outside_the_weights_does_not_block(tmp_path, sd):
    """A sparse tensor in the optimizer state is not the model's: the weights still load."""
    sparse = torch.eye(3).to_sparse()
    path = save({"state_dict": sd, "optimizer": {"state": {0: {"buf": sparse}}}}, tmp_path / "m")
    assert_table(table_of(path), sd)


def test_common_python_objects_beside_weights_are_data_not_code(tmp_path, sd):
    """Timestamps, defaultdicts and deques that training scripts store: read, not refused."""
    payload = {
        "state_dict": sd,
        "saved": datetime.datetime(2024, 5, 1, 12, 30),
        "history": collections.defaultdict(list, {"loss": [1.0, 0.5]}),
        "recent": collections.deque([1, 2, 3]),
        "epoch": 7,
    }
    path = save(payload, tmp_path / "m.pt")
    assert_table(table_of(path), sd)
    misnamed = tmp_path / "m.safetensors"  # a torch.save file, whatever its extension says
    misnamed.write_bytes(path.read_bytes())
    assert_table(table_of(misnamed), sd)


def test_float8_weights_are_analysed_as_float32(tmp_path, sd):
    low = {k: v.to(torch.float8_e4m3fn) if v.is_floating_point() else v for k, v in sd.items()}
    widened = {k: v.float() for k, v in low.items()}
    assert_table(table_of(save(low, tmp_path / "fp8.pt")), widened)


def test_integer_and_empty_buffers_that_are_not_layer_tensors_load(tmp_path, sd):
    extra = {"mask": torch.ones(5, dtype=torch.uint8), "placeholder": torch.empty(0)}
    assert_table(table_of(save(dict(sd, **extra), tmp_path / "m.pt")), sd)


def test_safetensors_file(tmp_path, sd):
    from safetensors.torch import save_file

    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, path, metadata={"format": "pt"})
    assert_table(table_of(path), sd)
    renamed = tmp_path / "weights.bin"  # found by its content, not only by its extension
    renamed.write_bytes(path.read_bytes())
    assert_table(table_of(renamed), sd)


def test_hugging_face_folder_with_one_weights_file(tmp_path, sd):
    from safetensors.torch import save_file

    folder = tmp_path / "hub-model"
    folder.mkdir()
    (folder / "config.json").write_text('{"num_classes": 3}')
    save_file({k: v.contiguous() for k, v in sd.items()}, folder / "model.safetensors")
    assert_table(table_of(folder), sd)
    torch.save(sd, folder / "pytorch_model.bin")  # both formats: safetensors is read
    assert_table(table_of(folder), sd)
    bin_only = tmp_path / "bin-only"
    bin_only.mkdir()
    torch.save(sd, bin_only / "pytorch_model.bin")
    assert_table(table_of(bin_only), sd)


@pytest.mark.parametrize(
    ("names", "fragments"),
    [
        (
            ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"),
            ("sharded", "model-00001-of-00002.safetensors"),
        ),
        (("config.json", "README.md"), ("no weights file", "README.md, config.json")),
        (("a.pt", "b.pt"), ("several weights files", "a.pt, b.pt")),
        ((), ("no weights file", "nothing")),
    ],
)
def test_folder_without_exactly_one_weights_file(tmp_path, sd, names, fragments):
    folder = tmp_path / "folder"
    folder.mkdir()
    for name in names:
        (folder / name).write_bytes(b"x")
    refused(folder, *fragments, tmp_path=tmp_path)


# ------------------------------------------------ whole pickled modules, classes in __main__

NOTEBOOK = """
import sys
import torch
import torch.nn.functional as F
from torch import nn

class Layer(nn.Module):
    def __init__(self, cin, k):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, k, 3, padding=1, bias=False)

    def forward(self, x):
        return torch.cat([x, self.conv1(F.relu(self.bn1(x)))], 1)

class Transition(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 1, bias=False)

class DenseNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.dense1 = nn.Sequential(Layer(8, 4), Layer(12, 4))
        self.trans1 = Transition(16, 8)
        self.dense2 = nn.Sequential(Layer(8, 4), Layer(12, 4))
        self.bn = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 3)
        self.activation = F.relu  # a function stored as an attribute: referenced, not called
        self.register_buffer("scratch", torch.zeros(2), persistent=False)

torch.manual_seed(1)
model = nn.DataParallel(DenseNet())
torch.save(model.module.state_dict(), sys.argv[1] + "/reference.pt")
torch.save(model, sys.argv[1] + "/whole.pt")
torch.save(model, sys.argv[1] + "/whole_legacy.pt", _use_new_zipfile_serialization=False)
torch.save({"model": model, "epoch": 3}, sys.argv[1] + "/wrapped.pt")

class AttributeDict(dict):  # as Lightning stores hyper_parameters
    pass

class Config:
    def __init__(self):
        self.growth_rate, self.depth = 4, 10

hparams = AttributeDict(lr=0.1, depth=10)
ckpt = {"state_dict": model.module.state_dict(), "hyper_parameters": hparams, "args": Config()}
torch.save(ckpt, sys.argv[1] + "/lightning.ckpt")
"""


@pytest.fixture(scope="module")
def notebook(tmp_path_factory):
    folder = tmp_path_factory.mktemp("notebook")
    script = folder / "notebook.py"
    script.write_text(NOTEBOOK)
    subprocess.run([sys.executable, str(script), str(folder)], check=True, cwd=folder)
    return folder


@pytest.mark.parametrize("name", ["whole.pt", "whole_legacy.pt", "wrapped.pt"])
def test_pickled_module_with_main_classes_loads_without_flag(notebook, name):
    reference = torch.load(notebook / "reference.pt", weights_only=True)
    assert_table(table_of(notebook / name), reference)
    result = run("info", notebook / name, "--json")
    assert result.exit_code == 0, result.stderr
    container = json.loads(result.stdout)["container"]
    assert container.startswith("pickled torch.nn.parallel.data_parallel.DataParallel module")
    assert container.endswith(("read without running its code", "under 'model'"))
    assert "Warning" not in result.stderr


def test_unknown_records_beside_the_weights_are_read_as_data(notebook):
    from reuse_analysis.checkpoint import load_checkpoint

    loaded = load_checkpoint(notebook / "lightning.ckpt")
    assert loaded.meta["hyper_parameters"] == {"lr": 0.1, "depth": 10}
    assert loaded.meta["args"] == {"growth_rate": 4, "depth": 10}
    assert_table(
        table_of(notebook / "lightning.ckpt"),
        torch.load(notebook / "reference.pt", weights_only=True),
    )


def test_pickled_module_state_dict_matches_the_real_one(notebook):
    from reuse_analysis.checkpoint import load_checkpoint

    reference = torch.load(notebook / "reference.pt", weights_only=True)
    loaded = load_checkpoint(notebook / "whole.pt")
    assert list(loaded.state_dict) == list(reference)  # order, and no non-persistent buffer
    for key, value in reference.items():
        assert torch.equal(loaded.state_dict[key], value), key
    assert loaded.container == "pickled torch.nn.parallel.data_parallel.DataParallel module, " + (
        "read without running its code"
    )
    trusted = load_checkpoint(notebook / "whole.pt", trust_pickle=True)  # nothing to run
    assert trusted.container == loaded.container


# --------------------------------------------------------------- code in the pickle


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _legacy_bytes(obj):
    out = io.BytesIO()
    for part in (torch.serialization.MAGIC_NUMBER, 1001, {"little_endian": True}):
        pickle.dump(part, out, protocol=2)
    pickle.dump(obj, out, protocol=2)
    pickle.dump([], out, protocol=2)
    return out.getvalue()


@pytest.mark.parametrize("fmt", ["legacy", "zip"])
def test_file_carrying_os_system_is_named_as_code_and_not_run(tmp_path, sd, fmt):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    payload = {"state_dict": sd, "hook": _Evil(marker)}
    if fmt == "legacy":
        path.write_bytes(_legacy_bytes({"hook": _Evil(marker)}))
    else:
        save(payload, path)
    line = refused(path, "would run code", "system", "--trust-pickle")
    assert "not a PyTorch checkpoint" not in line
    assert not marker.exists()


def test_trust_pickle_says_it_runs_code_before_it_does(tmp_path, sd):
    marker = tmp_path / "ran"
    path = save({"state_dict": sd, "hook": _Evil(marker)}, tmp_path / "evil.pt")
    result = run("table", path, "--trust-pickle")
    assert result.exit_code == 0
    assert marker.exists()
    first = result.stderr.splitlines()[0]
    assert first.startswith("Warning: --trust-pickle: running the code in")
    assert "system" in first


class _Allocate:
    """Unpickles as ``callable(*args)``: allowed constructors asked for a terabyte."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


@pytest.mark.parametrize(
    ("bomb", "fragment"),
    [
        (_Allocate(bytearray, 10**12), "bytearray from a non-container"),
        (_Allocate(bytes, 10**12), "bytes from a non-container"),
        (_Allocate(torch.Tensor, 10**6, 10**6), "calls torch.Tensor directly"),
        (_Allocate(np.ndarray, (10**12,)), "calls numpy.ndarray directly"),
    ],
)
def test_allowed_constructors_do_not_allocate_what_the_pickle_asks(tmp_path, sd, bomb, fragment):
    refused(save({"state_dict": sd, "extra": bomb}, tmp_path / "alloc.pt"), fragment)


# ------------------------------------------------------------------ damaged files


def test_bit_flip_in_a_tensor_record_fails_the_crc(tmp_path, sd):
    path = save(sd, tmp_path / "m.pt")
    key = next(n for n in zipfile.ZipFile(path).namelist() if n.endswith("data/0"))
    start, size = record_offset(path, key)
    raw = bytearray(path.read_bytes())
    raw[start + size // 2] ^= 0x10
    path.write_bytes(bytes(raw))
    refused(path, "CRC", "data/0")


def test_record_cut_to_half_is_not_read_from_its_neighbours(tmp_path, sd):
    src = save(sd, tmp_path / "m.pt")
    key = next(n for n in zipfile.ZipFile(src).namelist() if n.endswith("data/0"))

    def halve(name, data):
        return data[: len(data) // 2] if name == key else data

    path = rewrite_zip(src, tmp_path / "cut.pt", halve)
    refused(path, "record data/0 holds", "storage claims")


def test_truncated_legacy_file(tmp_path, sd):
    full = save(sd, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False).read_bytes()
    for cut in (len(full) // 2, len(full) - 3):
        path = tmp_path / f"cut{cut}.pt"
        path.write_bytes(full[:cut])
        refused(path, "truncated")


def test_tensor_reading_past_its_storage(tmp_path, sd):
    """A pickle whose tensor claims more values than its storage holds."""
    src = save({"w": torch.ones(4)}, tmp_path / "m.pt")
    pkl = next(n for n in zipfile.ZipFile(src).namelist() if n.endswith("data.pkl"))

    def widen(name, data):
        # The shape (4,) is pickled as K\x04 (BININT1 4) followed by the stride tuple.
        return data.replace(b"K\x04\x85", b"K\x40\x85", 1) if name == pkl else data

    path = rewrite_zip(src, tmp_path / "wide.pt", widen)
    refused(path, "storage holds 4")


def _nested_pickle(depth):
    return b"\x80\x02" + b"(" * depth + b"l" * depth + b"."


def test_metadata_nested_100000_deep(tmp_path, sd):
    src = save(sd, tmp_path / "m.pt")
    pkl = next(n for n in zipfile.ZipFile(src).namelist() if n.endswith("data.pkl"))
    deep = _nested_pickle(100_000)
    path = rewrite_zip(src, tmp_path / "deep.pt", lambda n, d: deep if n == pkl else d)
    refused(path, "nested more than")


def test_shared_metadata_that_expands_exponentially(tmp_path, sd):
    bomb = []
    for _ in range(80):
        bomb = [bomb, bomb]
    refused(save({"state_dict": sd, "meta": bomb}, tmp_path / "bomb.pt"), "items")


def test_metadata_that_contains_itself(tmp_path, sd):
    """A record that holds itself ten times: read once, not followed round the cycle."""
    loop = []
    loop.extend([loop] * 10)
    path = save({"state_dict": sd, "meta": {"loop": loop}, "epoch": 2}, tmp_path / "loop.pt")
    assert_table(table_of(path), sd)


# ----------------------------------------------------------------- tensor kinds

FC = "fc.weight"


@pytest.mark.parametrize(
    ("change", "fragments"),
    [
        (lambda w: w.to_sparse(), ("fc.weight is sparse",)),
        (lambda w: torch.zeros_like(w).to_sparse(), ("fc.weight is sparse",)),
        (lambda w: torch.empty(w.shape, device="meta"), ("fc.weight is a meta-device tensor",)),
        (
            lambda w: torch.quantize_per_tensor(w, 0.01, 0, torch.qint8),
            ("fc.weight is quantized",),
        ),
        (lambda w: (w * 100).to(torch.int8), ("fc.weight is stored as torch.int8", "quantized")),
        (lambda w: w.to(torch.complex64), ("fc.weight is complex",)),
        (lambda w: torch.empty(CLASSES, 0), ("fc.weight holds no values", "(3, 0)")),
        (lambda w: torch.zeros(1).expand(10**6, 10**6), ("fc.weight is an expanded view",)),
    ],
)
def test_tensor_kinds_refused_with_their_reason(tmp_path, sd, change, fragments):
    path = save(dict(sd, **{FC: change(sd[FC])}), tmp_path / "kind.pt")
    refused(path, *fragments)
    legacy = save(
        dict(sd, **{FC: change(sd[FC])}),
        tmp_path / "kind_legacy.pt",
        _use_new_zipfile_serialization=False,
    )
    refused(legacy, *fragments)


def test_expanded_conv_weight_of_huge_logical_size(tmp_path, sd):
    key = "dense1.0.conv1.weight"
    huge = torch.ones(1).expand(48, 24, 10**5, 10**5)
    path = save(dict(sd, **{key: huge}), tmp_path / "huge.pt")
    assert path.stat().st_size < 10**5
    refused(path, f"{key} is an expanded view")


def test_torchscript_archive_with_a_flipped_bit(tmp_path, sd):
    model = AttrBlocksNet(
        k=K, layers=LAYERS, c0=C0, width=0, classes=CLASSES, trans_names=("bn1", "conv1"), fc="fc"
    )
    model.load_state_dict(sd)
    path = tmp_path / "m.ts"
    with warnings.catch_warnings():  # torch deprecates TorchScript; files of it still exist
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(model.eval(), torch.randn(1, 3, 8, 8)), path)
    assert_table(table_of(path), sd)
    key = next(n for n in zipfile.ZipFile(path).namelist() if n.endswith("data/0"))
    start, size = record_offset(path, key)
    raw = bytearray(path.read_bytes())
    raw[start + size // 2] ^= 0x01
    path.write_bytes(bytes(raw))
    refused(path, "CRC")


# --------------------------------------------------------- not files, odd names


def test_character_device_fifo_and_directory(tmp_path):
    refused(Path("/dev/zero"), "character device", tmp_path=tmp_path)
    fifo = tmp_path / "pipe.pt"
    os.mkfifo(fifo)
    refused(fifo, "named pipe (FIFO)")
    refused(tmp_path / "missing.pt", "no such file")


def test_file_name_with_a_newline_stays_one_line(tmp_path):
    path = tmp_path / "bad\nname.pt"
    path.write_bytes(os.urandom(256))
    line = refused(path, "not a PyTorch checkpoint")
    assert "bad\\nname.pt" in line


def test_json_zip_and_random_bytes(tmp_path):
    (tmp_path / "j.pt").write_text('{"a": 1}')
    refused(tmp_path / "j.pt", "JSON file")
    with zipfile.ZipFile(tmp_path / "z.pt", "w") as zf:
        zf.writestr("notes.txt", "hello")
    refused(tmp_path / "z.pt", "without a single data.pkl")
    (tmp_path / "s.safetensors").write_bytes(b"\xff" * 64)
    refused(tmp_path / "s.safetensors", "not a valid safetensors file")


# -------------------------------------------------------------------- outputs


def test_unknown_table_extension_refused(tmp_path, sd):
    path = save(sd, tmp_path / "m.pt")
    out = tmp_path / "x.xlsx"
    assert_refused(run("table", path, "-o", out), "'.xlsx'", output=out)


def test_unwritable_target_is_named(tmp_path, sd):
    path = save(sd, tmp_path / "m.pt")
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    out = blocker / "table.csv"
    line = assert_refused(run("table", path, "-o", out))
    assert f"cannot write {out}" in line and ".tmp-" not in line


def test_full_disk_names_the_target_and_leaves_no_temporary(tmp_path, sd, monkeypatch):
    path = save(sd, tmp_path / "m.pt")
    out = tmp_path / "table.csv"

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(Path, "write_text", full)
    line = assert_refused(run("table", path, "-o", out), output=out)
    assert f"cannot write {out}: No space left on device" in line
    assert ".tmp-" not in line


def test_temporary_of_a_killed_writer_is_removed_by_the_next_write(tmp_path, sd):
    path = save(sd, tmp_path / "m.pt")
    out = tmp_path / "table.csv"
    killed = subprocess.Popen([sys.executable, "-c", "pass"])
    killed.wait()
    stale = tmp_path / f".table.csv.tmp-{killed.pid}-abc123.csv"
    stale.write_text("half a table")
    other = tmp_path / ".other.csv.tmp-1-abc.csv"  # another target's: left alone
    other.write_text("x")
    assert run("table", path, "-o", out).exit_code == 0
    assert out.exists() and not stale.exists() and other.exists()


# ---------------------------------------------- the real process: nothing else on stderr


def _cli_process(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONWARNINGS="default")
    return subprocess.run(
        [sys.executable, "-m", "reuse_analysis", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )


def test_process_keeps_torch_warnings_off_stderr(tmp_path, sd):
    qint8 = dict(sd, **{FC: torch.quantize_per_tensor(sd[FC], 0.01, 0, torch.qint8)})
    bad = save(qint8, tmp_path / "q.pt")
    proc = _cli_process("table", bad)
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith("Error: "), proc.stderr
    good = save(sd, tmp_path / "p5.pt", pickle_protocol=5)
    proc = _cli_process("table", good)
    assert proc.returncode == 0
    # the toolkit's own lines (the structure, and "warning: the weights look untrained"
    # for these freshly built weights) are all there is: nothing from torch's warnings
    ours = ("DenseNet", "warning: the weights look untrained")
    foreign = [line for line in proc.stderr.splitlines() if not line.startswith(ours)]
    assert foreign == [], proc.stderr
    assert "UserWarning" not in proc.stderr and "torch" not in proc.stderr, proc.stderr
