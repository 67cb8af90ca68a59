"""The one cache: hits and misses by key, atomic writes, resumed computations, weights."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from reuse_analysis import cache as cache_module
from reuse_analysis.cache import Cache, canonical_json, digest, weights_hash


def _files(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def test_a_value_is_found_by_its_inputs_and_only_by_them(tmp_path):
    cache = Cache(tmp_path)
    inputs = {"weights": "ab12", "test": ["cifar10", 500, [0.5, 0.4], (0.2, 0.3)]}
    assert cache.get("evaluation", inputs) is None
    cache.put("evaluation", inputs, [0.25, 0.875])
    # the same inputs written another way (key order, a tuple for a list) hit
    same = {"test": ["cifar10", 500, (0.5, 0.4), [0.2, 0.3]], "weights": "ab12"}
    assert cache.get("evaluation", same) == [0.25, 0.875]
    # any change of an input misses: another image count, another name
    other = {**inputs, "test": ["cifar10", 499, [0.5, 0.4], [0.2, 0.3]]}
    assert cache.get("evaluation", other) is None
    assert cache.get("sweep", inputs) is None
    (entry,) = tmp_path.iterdir()
    assert entry.name == f"evaluation-{digest(inputs)[:16]}.json"
    assert json.loads(entry.read_text()) == {
        "inputs": json.loads(canonical_json(inputs)),
        "value": [0.25, 0.875],
    }


def test_canonical_json_is_one_text_and_refuses_what_is_not_plain_data():
    assert canonical_json({"b": (1, 2.5), "a": None}) == '{"a":null,"b":[1,2.5]}'
    assert digest({"b": [1, 2.5], "a": None}) == digest({"a": None, "b": (1, 2.5)})
    with pytest.raises(TypeError):
        canonical_json({"weights": torch.zeros(1)})


def test_compute_calls_the_function_once_per_inputs(tmp_path):
    calls = []

    def square(n):
        calls.append(n)
        return n * n

    cache = Cache(tmp_path)
    assert [cache.compute("sq", {"n": n}, lambda n=n: square(n)) for n in (3, 4, 3)] == [9, 16, 9]
    assert calls == [3, 4]
    # a new Cache object on the same folder (a new process) still hits
    assert Cache(tmp_path).compute("sq", {"n": 4}, lambda: square(-1)) == 16
    assert calls == [3, 4]


def test_without_a_folder_nothing_is_stored(tmp_path):
    cache = Cache(None)
    cache.put("x", {"a": 1}, 2)
    assert cache.get("x", {"a": 1}) is None and cache.path("x", {"a": 1}) is None
    record = cache.record("x", {"a": 1})
    record.put("part", 1)
    assert "part" in record and record.path is None


def test_an_entry_stored_for_other_inputs_under_the_same_file_name_is_a_miss(tmp_path):
    cache = Cache(tmp_path)
    inputs = {"n": 1}
    path = cache.path("x", inputs)
    path.write_text(json.dumps({"inputs": {"n": 2}, "value": "other"}))
    assert cache.get("x", inputs) is None
    assert cache.compute("x", inputs, lambda: "mine") == "mine"
    assert cache.get("x", inputs) == "mine"


def test_a_truncated_entry_is_a_miss_and_is_rewritten(tmp_path):
    cache = Cache(tmp_path)
    cache.put("x", {"n": 1}, list(range(100)))
    path = cache.path("x", {"n": 1})
    path.write_text(path.read_text()[:40])  # what a non-atomic writer leaves when killed
    assert cache.get("x", {"n": 1}) is None
    assert cache.compute("x", {"n": 1}, lambda: [1]) == [1]
    assert cache.get("x", {"n": 1}) == [1]


def test_a_write_that_fails_half_way_leaves_the_old_entry_and_no_partial_file(
    tmp_path, monkeypatch
):
    cache = Cache(tmp_path)
    cache.put("x", {"n": 1}, "old")
    before = _files(tmp_path)
    real_write = Path.write_text

    def half_then_die(self, text, *args, **kwargs):
        real_write(self, text[: len(text) // 2], *args, **kwargs)
        raise KeyboardInterrupt  # killed while writing

    monkeypatch.setattr(Path, "write_text", half_then_die)
    with pytest.raises(KeyboardInterrupt):
        cache.put("x", {"n": 1}, "new value")
    with pytest.raises(KeyboardInterrupt):
        cache.put("x", {"n": 2}, "first value")
    monkeypatch.undo()
    assert _files(tmp_path) == before  # no temporary file, no entry for n=2
    assert cache.get("x", {"n": 1}) == "old"
    assert cache.get("x", {"n": 2}) is None


def test_a_value_that_is_not_json_leaves_nothing(tmp_path):
    with pytest.raises(TypeError):
        Cache(tmp_path).put("x", {"n": 1}, {"tensor": torch.ones(2)})
    assert _files(tmp_path) == []


def _squares(record, parts, fail_at=None):
    """A computation of many parts: n → n², each part kept as soon as it is done."""
    computed = []
    for n in parts:
        if str(n) in record:
            continue
        if n == fail_at:
            raise KeyboardInterrupt
        computed.append(n)
        record.put(str(n), n * n)
    return computed


def test_an_interrupted_computation_resumes_and_computes_only_what_is_missing(tmp_path):
    inputs = {"weights": "w", "parts": list(range(6))}
    with pytest.raises(KeyboardInterrupt):
        _squares(Cache(tmp_path).record("squares", inputs), range(6), fail_at=4)
    # a new run (a new process) finds the four finished parts
    record = Cache(tmp_path).record("squares", inputs)
    assert sorted(record.parts) == ["0", "1", "2", "3"]
    assert _squares(record, range(6)) == [4, 5]
    assert Cache(tmp_path).record("squares", inputs).parts == {str(n): n * n for n in range(6)}
    assert _squares(Cache(tmp_path).record("squares", inputs), range(6)) == []
    # other inputs start from nothing
    assert _squares(Cache(tmp_path).record("squares", {**inputs, "weights": "v"}), range(2)) == [
        0,
        1,
    ]


def test_a_throttled_record_writes_when_forced(tmp_path, monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(cache_module.time, "monotonic", lambda: clock[0])
    record = Cache(tmp_path).record("chunks", {"k": 1}, save_every_s=30)
    record.parts["0"] = {"a": 1}
    record.save()  # under 30 s since the record was opened: not written yet
    assert Cache(tmp_path).record("chunks", {"k": 1}).parts == {}
    clock[0] += 31
    record.save()
    assert Cache(tmp_path).record("chunks", {"k": 1}).parts == {"0": {"a": 1}}
    record.parts["1"] = {"a": 2}
    record.save()
    assert "1" not in Cache(tmp_path).record("chunks", {"k": 1})
    record.save(force=True)
    assert "1" in Cache(tmp_path).record("chunks", {"k": 1})


def test_different_weights_give_different_keys():
    torch.manual_seed(0)
    weights = {"conv.weight": torch.randn(4, 3, 3, 3), "fc.bias": torch.zeros(10)}
    same = {k: v.clone() for k, v in reversed(weights.items())}
    assert weights_hash(weights) == weights_hash(same)  # bytes, not identity or order
    changed = {k: v.clone() for k, v in weights.items()}
    changed["conv.weight"][0, 0, 0, 0] += 1e-6
    renamed = {"conv2.weight" if k == "conv.weight" else k: v for k, v in weights.items()}
    as_half = {k: v.half() for k, v in weights.items()}
    reshaped = {**weights, "fc.bias": weights["fc.bias"].view(2, 5)}
    hashes = [weights_hash(w) for w in (weights, changed, renamed, as_half, reshaped)]
    assert len(set(hashes)) == 5
    keys = {digest({"weights": h, "test": ["cifar10", 100]}) for h in hashes}
    assert len(keys) == 5


def test_the_weights_hash_is_the_one_recorded_in_pruned_checkpoints():
    from reuse_analysis.probes import state_hash

    weights = {"w": torch.arange(6, dtype=torch.float32).view(2, 3)}
    h = hashlib.sha256(b"w|torch.float32|(2, 3)|")
    h.update(torch.arange(6, dtype=torch.float32).numpy().tobytes())
    assert weights_hash(weights) == state_hash(weights) == h.hexdigest()
