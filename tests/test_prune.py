"""Pruning, agreement and the data-driven CLI on a tiny trained DenseNet and a tiny data set."""

from __future__ import annotations

import json
import math
from io import StringIO
from pathlib import Path

import numpy as np
import pandas as pd
import pypdf
import pytest
import torch
from click.testing import CliRunner

from reuse_analysis.agreement import agreement_table, spearman
from reuse_analysis.checkpoint import load_checkpoint
from reuse_analysis.cli import cli
from reuse_analysis.prune import PruneError, connection_slice, select_cuts
from reuse_analysis.structure import infer_structure
from reuse_analysis.tables import build_table
from reuse_analysis.train import TrainConfig, train

TINY = {"growth_rate": 4, "block_config": (3, 2), "num_init_features": 8}
CONNECTIONS = (3 * 4 // 2 + 4) + (2 * 3 // 2 + 3)  # layers + transition, layers + classifier


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A DenseNet-BC trained for two epochs by `train` on 160 16×16 images of 4 classes."""
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("prune")
    data = root / "tiny.npz"

    def split(n):
        y = rng.integers(0, 4, n)
        x = rng.integers(0, 60, (n, 16, 16, 3), dtype=np.uint8)
        x[np.arange(n), :, :, y % 3] += (60 * (1 + y // 3)).astype(np.uint8)[:, None, None]
        return x, y

    (x_train, y_train), (x_test, y_test) = split(160), split(48)
    np.savez(data, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    out = root / "tiny.pt"
    train(
        TrainConfig(
            arch="densenet_bc_100",
            dataset=f"npz:{data}",
            data_dir=str(root / "cache"),
            epochs=2,
            batch_size=32,
            out=str(out),
            device="cpu",
            model_overrides=TINY,
            checkpoint_minutes=1e9,
        )
    )
    return out


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def _table(values: dict[tuple[int, int, int], float]) -> pd.DataFrame:
    rows = [(b, s, t, "layer", v) for (b, s, t), v in values.items()]
    return build_table(rows, "weight", concat_order="oldest-first", structure="hand")


# ----------------------------------------------------------------------------- selection
def test_select_cuts_per_column_keeps_the_strongest_and_at_least_one():
    table = _table(
        {
            (1, 0, 1): 0.5,  # a single source: always kept
            (1, 0, 2): 0.1,
            (1, 1, 2): 0.9,
            (1, 0, 3): 0.3,
            (1, 1, 3): 0.2,
            (1, 2, 3): 0.7,
            (1, 3, 3): 0.2,  # tie with source 1: the older one is kept
        }
    )
    cut = lambda f, scope="column": sorted(  # noqa: E731
        map(tuple, select_cuts(table, f, scope)[["source", "target"]].to_numpy().tolist())
    )
    assert cut(0.0) == []
    # keep ⌈0.5·n⌉: column 2 keeps 1 of 2, column 3 keeps 2 of 4
    assert cut(0.5) == [(0, 2), (1, 3), (3, 3)]
    # keep ⌈0.25·n⌉: column 3 keeps 1 of 4
    assert cut(0.75) == [(0, 2), (0, 3), (1, 3), (3, 3)]
    # global: keep ⌈0.5·7⌉ = 4 by raw value, each column's strongest included
    assert cut(0.5, "global") == [(0, 2), (1, 3), (3, 3)]
    assert cut(0.9, "global") == [(0, 2), (0, 3), (1, 3), (3, 3)]
    with pytest.raises(PruneError, match="fraction"):
        select_cuts(table, 1.0)


def test_connection_slice_names_the_weight_columns(trained):
    sd = load_checkpoint(trained).state_dict
    structure = infer_structure(sd)
    assert connection_slice(structure, 1, 2, 3) == (
        "features.denseblock1.denselayer3.conv1.weight", 12, 16
    )  # fmt: skip
    assert connection_slice(structure, 1, 0, 4) == ("features.transition1.conv.weight", 0, 8)
    assert connection_slice(structure, 2, 2, 3) == ("classifier.weight", 14, 18)


# ----------------------------------------------------------------------------- agreement
def test_spearman_is_pearson_on_average_ranks():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 1000]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ties: ranks (1.5, 1.5, 3) against (1, 2, 3) → Pearson of those
    assert spearman([5, 5, 7], [1, 2, 3]) == pytest.approx(
        np.corrcoef([1.5, 1.5, 3], [1, 2, 3])[0, 1]
    )
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_agreement_table_per_block_all_and_within_columns():
    truth = {(1, 0, 1): 1.0, (1, 0, 2): 1.0, (1, 1, 2): 2.0, (1, 0, 3): 1.0, (1, 1, 3): 2.0,
             (1, 2, 3): 3.0, (2, 0, 1): 5.0, (2, 0, 2): 1.0, (2, 1, 2): 0.0}  # fmt: skip
    same = {k: 10 * v for k, v in truth.items()}
    reverse = {k: -v for k, v in truth.items()}
    ablation = _table(truth).rename(columns={"mean_abs_weight": "loss_increase"})
    ablation.attrs["metric"] = "ablation"
    df = agreement_table(
        {"weight": _table(same), "bn-weight": _table(reverse), "ablation": ablation}
    )
    got = df.set_index(["metric", df.block.astype(str)])
    assert got.loc[("weight", "1"), "spearman"] == pytest.approx(1.0)
    assert got.loc[("weight", "all"), "within_column"] == pytest.approx(1.0)
    assert got.loc[("bn-weight", "2"), "spearman"] == pytest.approx(-1.0)
    assert got.loc[("bn-weight", "all"), "within_column"] == pytest.approx(-1.0)  # column 1/3 only
    assert got.loc[("weight", "1"), "connections"] == 6


# ----------------------------------------------------------------------------- prune
def test_pruned_model_reloads_with_its_masks_and_the_same_accuracy(tmp_path, trained):
    out = tmp_path / "pruned.pt"
    data = ["--data-dir", tmp_path / "data", "--images", 64]
    result = run("prune", trained, "--metric", "ablation", "--fraction", 0.5, "-o", out, "--json",
                 *data)  # fmt: skip
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["connections"] == CONNECTIONS
    # per column keep ⌈n/2⌉: block 1 (1, 2, 3 sources; transition 4), block 2 (1, 2; 3)
    assert record["connections_cut"] == (0 + 1 + 1 + 2) + (0 + 1 + 1)
    assert record["test"]["images"] == 48
    ckpt = load_checkpoint(out)
    assert ckpt.arch == "densenet_bc_100" and ckpt.config["block_config"] == [3, 2]
    cut = pd.DataFrame(ckpt.meta["prune"]["cut"])
    assert len(cut) == record["connections_cut"]
    structure = infer_structure(ckpt.state_dict)
    for c in cut.itertuples():
        key, start, stop = connection_slice(structure, c.block, c.source, c.target)
        assert not ckpt.state_dict[key][:, start:stop].any()
    evaluated = json.loads(run("evaluate", out, "--json", "--data-dir", tmp_path / "data").stdout)
    assert evaluated["accuracy"] == record["accuracy_pruned"] == record["accuracy_after"]
    assert evaluated["loss"] == pytest.approx(record["loss_pruned"], rel=1e-6)
    assert ckpt.meta["test_acc"] == record["accuracy_after"]
    # the weight table of the pruned model shows the cut connections as exactly zero
    table = pd.read_csv(StringIO(run("table", out).stdout))
    zero = table.merge(cut, on=["block", "source", "target"])
    assert len(zero) == len(cut) and (zero.mean_abs_weight == 0).all()
    assert run("heatmap", out, "-o", tmp_path / "h.png").exit_code == 0


def test_finetuning_keeps_cut_weights_at_zero(tmp_path, trained):
    out = tmp_path / "tuned.pt"
    tune = ["--finetune-epochs", 1, "--finetune-lr", 0.05]
    result = run("prune", trained, "--metric", "weight", "--fraction", 0.5, *tune, "-o", out,
                 "--json", "--data-dir", tmp_path / "data")  # fmt: skip
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    tuned = load_checkpoint(out)
    original = load_checkpoint(trained).state_dict
    structure = infer_structure(tuned.state_dict)
    cut = pd.DataFrame(tuned.meta["prune"]["cut"])
    changed = 0
    for c in cut.itertuples():
        key, start, stop = connection_slice(structure, c.block, c.source, c.target)
        assert not tuned.state_dict[key][:, start:stop].any()
    for key, w in tuned.state_dict.items():
        changed += not torch.equal(w, original[key])
    assert changed > 10  # the rest did train
    assert len(record["finetune"]["history"]) == 1
    evaluated = json.loads(run("evaluate", out, "--json", "--data-dir", tmp_path / "data").stdout)
    assert evaluated["accuracy"] == pytest.approx(record["accuracy_after"])
    assert not (tmp_path / "tuned.finetune.pt").exists()
    assert not (tmp_path / "tuned.finetune.train.pt").exists()
    assert (tmp_path / "tuned.finetune.log.csv").is_file()


def test_sweep_figure_csv_and_cache(tmp_path, trained, monkeypatch):
    fig = tmp_path / "sweep.png"
    args = ["prune", trained, "--sweep", "--metrics", "weight,taylor,random", "--fractions",
            "0,0.5", "-o", fig, "--data-dir", tmp_path / "data", "--images", 32]  # fmt: skip
    result = run(*args)
    assert result.exit_code == 0, result.output
    assert result.stdout.split() == [str(fig), str(tmp_path / "sweep.csv")]
    assert fig.read_bytes()[:4] == b"\x89PNG"
    df = pd.read_csv(tmp_path / "sweep.csv")
    # the random baseline runs 5 seeds (the default) at each fraction
    assert df.metric.tolist() == ["unpruned"] + ["weight"] * 2 + ["taylor"] * 2 + ["random"] * 10
    assert df[df.metric == "random"].seed.tolist() == [0, 1, 2, 3, 4] * 2
    base = df.accuracy[0]
    assert (df[df.fraction == 0].accuracy == base).all()  # cutting nothing changes nothing
    assert (df[df.fraction == 0.5].connections_cut == 6).all()
    assert (df.test_images == 48).all()
    # trained statistics: the order is detected, and no rebuild reordered the model
    pairs = 3 + 2  # a norm pair per layer (the next layer's or the extra's)
    said = f"oldest-first (detected: {pairs} of {pairs} batch-norm pairs, 0 against)"
    assert (df.concat_order == said).all()
    payload = json.loads(run(*args, "--json").stdout)
    assert payload["reordered"] is False and payload["concat_order_text"] == said
    assert payload["checkpoint_concat_order"]["provenance"] == "detected"
    # a rerun reads every accuracy from the cache: no evaluation at all
    import reuse_analysis.runtime as runtime_module

    def no_evaluation(*a, **k):
        raise AssertionError("evaluated again")

    monkeypatch.setattr(runtime_module, "evaluate", no_evaluation)
    again = run(*args)
    assert again.exit_code == 0, again.output
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "sweep.csv"), df)


def test_interrupted_sweep_exits_130_and_the_rerun_finishes_it(tmp_path, trained, monkeypatch):
    import reuse_analysis.runtime as runtime_module

    fig = tmp_path / "sweep.png"
    args = ["prune", trained, "--sweep", "--metrics", "weight,random", "--fractions",
            "0.25,0.5", "--seeds", 2, "-o", fig, "--data-dir", tmp_path / "data",
            "--images", 32]  # fmt: skip
    real, calls, stop_at = runtime_module.evaluate, [], [3]

    def stops_on_the_third(*a, **k):
        calls.append(1)
        if len(calls) == stop_at[0]:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(runtime_module, "evaluate", stops_on_the_third)
    stopped = run(*args)
    assert stopped.exit_code == 130
    assert "interrupted: rerun the same command" in stopped.stderr
    assert "Traceback" not in stopped.output and not fig.exists()
    calls.clear()
    stop_at[0] = 0
    finished = run(*args)
    assert finished.exit_code == 0, finished.output
    assert len(calls) == 5  # unpruned and the first cut came from the cache: 7 − 2
    assert len(pd.read_csv(tmp_path / "sweep.csv")) == 7  # 1 + 2 weight + 2 × 2 random


def test_agreement_command_and_report_pages(tmp_path, trained):
    data = ["--data-dir", tmp_path / "data", "--images", 32]
    result = run("agreement", trained, "--json", "-o", tmp_path / "a.png", *data)
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["reference"] == "ablation"
    assert payload["data"]["images"] == 32 and payload["data"]["split"] == "train"
    rows = pd.DataFrame(payload["rows"])
    assert sorted(set(rows.metric)) == ["activation", "bn-weight", "taylor", "weight"]
    assert sorted(set(rows.block.astype(str))) == ["1", "2", "all"]
    assert rows.spearman.between(-1, 1).all()
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"
    text = run("agreement", trained, "-o", tmp_path / "a.png", *data)
    assert "within col." in text.stdout and "taylor" in text.stdout

    sweep = tmp_path / "s.png"
    assert run("prune", trained, "--sweep", "--metrics", "weight", "--fractions", "0.5",
               "--scope", "global", "-o", sweep, *data).exit_code == 0  # fmt: skip
    pdf = tmp_path / "r.pdf"
    result = run("report", trained, "-o", pdf, "--agreement", "--sweep", tmp_path / "s.csv", *data)
    assert result.exit_code == 0, result.output
    pages = [" ".join(p.extract_text().split()) for p in pypdf.PdfReader(pdf).pages]
    assert any("Which metric finds the connections that matter?" in p for p in pages)
    [page] = [p for p in pages if "Pruning sweep" in p]
    assert "unpruned" in page and "of all N connections by the metric's raw value" in page


# ----------------------------------------------------------------------------- metrics in the CLI
@pytest.mark.parametrize("metric", ["bn-weight", "activation", "ablation", "taylor"])
def test_table_with_each_metric(tmp_path, trained, metric):
    out = tmp_path / "t.json"
    result = run("table", trained, "--metric", metric, "-o", out, "--data-dir", tmp_path / "d",
                 "--images", 16)  # fmt: skip
    assert result.exit_code == 0, result.output
    payload = json.loads(out.read_text())
    value = {"bn-weight": "mean_abs_bn_weight", "activation": "mean_abs_contribution",
             "ablation": "loss_increase", "taylor": "taylor_loss_increase"}[metric]  # fmt: skip
    extra = ["accuracy_drop"] if metric == "ablation" else []
    assert payload["columns"] == ["block", "source", "target", "target_kind", value, "normalized",
                                  *extra]  # fmt: skip
    assert payload["metric"] == metric and payload["concat_order"] == "oldest-first"
    assert len(payload["rows"]) == CONNECTIONS
    if metric != "bn-weight":
        assert payload["data"] == {"dataset": payload["data"]["dataset"], "split": "train",
                                   "images": 16}  # fmt: skip
    assert f"metric {metric}" in result.stderr
    png = tmp_path / "h.png"
    assert run("heatmap", trained, "--metric", metric, "-o", png, "--data-dir", tmp_path / "d",
               "--images", 16).exit_code == 0  # fmt: skip


def test_data_driven_metric_on_a_model_it_cannot_run(tmp_path):
    from layouts import layouts

    build, _, _ = layouts()["kuangliu"]
    path = tmp_path / "kuangliu.pt"
    # Without the norms in front of each layer's first conv there is nothing to rebuild.
    torch.save({k: v for k, v in build().state_dict().items() if ".bn1." not in k}, path)
    out = tmp_path / "x.csv"
    result = run("table", path, "--metric", "ablation", "--dataset", "cifar10", "-o", out)
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1
    assert "a model the toolkit can run" in result.stderr
    assert "no batch norm with running statistics" in result.stderr
    assert not out.exists()


def test_prune_on_a_zoo_model_says_what_it_needs(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (4, 8, 8, 3), dtype=np.uint8)
    data = tmp_path / "d.npz"
    np.savez(data, x_train=x, y_train=np.arange(4) % 2, x_test=x, y_test=np.arange(4) % 2)
    path = tmp_path / "d2l.pt"
    train(
        TrainConfig(
            arch="d2l_densenet",
            dataset=f"npz:{data}",
            data_dir=str(tmp_path / "cache"),
            epochs=1,
            batch_size=4,
            out=str(path),
            device="cpu",
            checkpoint_minutes=1e9,
        )
    )
    out = tmp_path / "pruned.pt"
    result = run("prune", path, "--metric", "weight", "--fraction", "0.5", "-o", out)
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1
    assert "holds a d2l_densenet, not one of this toolkit's DenseNets" in result.stderr
    assert "--metric weight still work" in result.stderr
    assert not out.exists()


@pytest.mark.parametrize("command", ["prune", "table"])
def test_a_data_set_the_model_cannot_take_is_an_error_line(tmp_path, trained, command):
    gray = tmp_path / "gray.npz"
    x = np.zeros((4, 16, 16), dtype=np.uint8)
    np.savez(gray, x_train=x, y_train=np.arange(4) % 2, x_test=x, y_test=np.arange(4) % 2)
    out = tmp_path / ("p.pt" if command == "prune" else "t.csv")
    args = ["--metric", "weight", "--fraction", "0.5"] if command == "prune" else []
    args += ["--metric", "activation"] if command == "table" else []
    data = ["--dataset", f"npz:{gray}", "--data-dir", tmp_path / "data"]
    result = run(command, trained, *args, *data, "-o", out)
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1
    assert "was built for 3-channel images" in result.stderr and "1-channel" in result.stderr
    assert not out.exists()


def test_finetuning_weights_alone_is_refused_before_any_evaluation(tmp_path, trained, monkeypatch):
    import reuse_analysis.runtime as runtime_module

    raw = tmp_path / "raw.pt"
    torch.save(load_checkpoint(trained).state_dict, raw)  # no arch, config or data set

    def no_evaluation(*a, **k):
        raise AssertionError("evaluated before refusing")

    monkeypatch.setattr(runtime_module, "evaluate", no_evaluation)
    out = tmp_path / "p.pt"
    data = ["--data-dir", tmp_path / "data"]
    result = run("prune", raw, "--fraction", "0.5", "--finetune-epochs", "1", *data, "-o", out)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("Error: fine-tuning needs a checkpoint written by")
    assert not out.exists()


@pytest.mark.parametrize("command", ["evaluate", "agreement"])
def test_a_recorded_data_set_that_is_gone_asks_for_dataset(tmp_path, command):
    x = np.random.default_rng(0).integers(0, 255, (4, 8, 8, 3), dtype=np.uint8)
    data = tmp_path / "gone.npz"
    np.savez(data, x_train=x, y_train=np.arange(4) % 2, x_test=x, y_test=np.arange(4) % 2)
    model = tmp_path / "m.pt"
    train(
        TrainConfig(
            arch="densenet_bc_100", dataset=f"npz:{data}", data_dir=str(tmp_path / "cache"),
            epochs=1, batch_size=4, out=str(model), device="cpu", model_overrides=TINY,
            checkpoint_minutes=1e9,
        )
    )  # fmt: skip
    data.unlink()
    result = run(command, model, "--data-dir", tmp_path / "cache")
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1
    assert f"(the data set recorded in {model}); pass --dataset NAME" in result.stderr


def test_newest_first_is_refused_for_data_driven_metrics(trained):
    result = run("table", trained, "--metric", "taylor", "--concat-order", "newest-first")
    assert result.exit_code == 2 and "oldest-first" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["prune", "MISSING", "--fraction", "0.5", "-o", "OUT.pt"],
        ["prune", "MODEL", "-o", "OUT.pt"],
        ["prune", "MODEL", "--fraction", "0.5", "-o", "OUT.png"],
        ["agreement", "MODEL", "--metrics", "weight,nonsense", "-o", "OUT.png"],
        ["report", "MODEL", "--sweep", "MISSING", "-o", "OUT.pdf"],
        ["prune", "MODEL", "--sweep", "--metrics", "nonsense", "-o", "OUT.png"],
    ],
)
def test_bad_requests_one_error_line(tmp_path, trained, args):
    subst = {"MISSING": tmp_path / "missing.pt", "MODEL": trained,
             "OUT.pt": tmp_path / "o" / "out.pt", "OUT.png": tmp_path / "o" / "out.png",
             "OUT.pdf": tmp_path / "o" / "out.pdf"}  # fmt: skip
    result = run(*[subst.get(a, a) for a in args], "--data-dir", tmp_path / "data")
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1, result.stderr
    assert result.stdout == ""
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())
    assert not Path(tmp_path / "o" / "out.csv").exists()


def test_heatmap_default_name_says_the_metric(tmp_path, trained, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run("heatmap", trained, "--metric", "bn-weight")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(Path("reports") / "tiny-bn-weight-heatmap.png")
    assert (tmp_path / "reports" / "tiny-bn-weight-heatmap.png").is_file()


def test_data_driven_prune_builds_the_model_and_loads_the_data_once(tmp_path, trained, monkeypatch):
    import reuse_analysis.probes as probes

    calls = {"model": 0, "data": 0}
    real_model, real_data = probes.runnable_model, probes.load_data

    def counted_model(*a, **k):
        calls["model"] += 1
        return real_model(*a, **k)

    def counted_data(*a, **k):
        calls["data"] += 1
        return real_data(*a, **k)

    monkeypatch.setattr(probes, "runnable_model", counted_model)
    monkeypatch.setattr(probes, "load_data", counted_data)
    out = tmp_path / "p.pt"
    data = ["--data-dir", tmp_path / "data", "--images", 16]
    result = run("prune", trained, "--metric", "activation", "--fraction", "0.5", *data, "-o", out)
    assert result.exit_code == 0, result.output
    assert calls == {"model": 1, "data": 1}
    assert load_checkpoint(out).meta["prune"]["probe"]["images"] == 16


def test_random_ranking_is_seeded_and_covers_every_connection(trained):
    from reuse_analysis.prune import RANKINGS, connection_values

    sd = load_checkpoint(trained).state_dict
    structure = infer_structure(sd)
    a = connection_values("random", sd, structure, seed=1)
    b = connection_values("random", sd, structure, seed=1)
    c = connection_values("random", sd, structure, seed=2)
    assert len(a) == CONNECTIONS and list(RANKINGS)[-1] == "random"
    pd.testing.assert_frame_equal(a, b)
    assert not np.allclose(a.mean_abs_weight, c.mean_abs_weight)
    weight = connection_values("weight", sd, structure)
    assert a[["block", "source", "target"]].equals(weight[["block", "source", "target"]])
    with pytest.raises(PruneError, match="unknown metric 'nope'"):
        connection_values("nope", sd, structure)


def test_model_card_reads_the_checkpoint_once(tmp_path, trained, monkeypatch):
    import reuse_analysis.checkpoint as checkpoint_module
    import reuse_analysis.evaluation as evaluation
    import reuse_analysis.modelcard as modelcard

    loads = []
    real = checkpoint_module.load_checkpoint

    def counted(*a, **k):
        loads.append(a[0])
        return real(*a, **k)

    monkeypatch.setattr(modelcard, "load_checkpoint", counted)
    monkeypatch.setattr(evaluation, "load_checkpoint", counted)
    card = modelcard.make_card(trained, command="train …", data_dir=str(tmp_path / "data"))
    assert len(loads) == 1
    assert card["test_images"] == 48 and 0 <= card["test_accuracy"] <= 1


# ----------------------------------------------------------------------------- random baseline
def test_sweep_summary_is_the_mean_and_spread_of_the_runs():
    from reuse_analysis.prune import sweep_summary

    rows = [("unpruned", 0.0, 0, 0.6, None), ("weight", 0.5, 6, 0.5, None)]
    rows += [("random", 0.5, 6, acc, seed) for seed, acc in enumerate([0.25, 0.5, 0.375])]
    df = pd.DataFrame(rows, columns=["metric", "fraction", "connections_cut", "accuracy", "seed"])
    df = df.assign(share_cut=df.fraction, bottleneck_inputs_cut=0.1 * df.connections_cut,
                   loss=1 - df.accuracy)  # fmt: skip
    got = sweep_summary(df).set_index("metric")
    assert got.loc["random", "runs"] == 3
    assert got.loc["random", "accuracy_mean"] == pytest.approx(0.375)
    assert got.loc["random", "accuracy_sd"] == pytest.approx(0.125)  # sample sd of ±0.125, 0
    assert (got.loc["random", "accuracy_min"], got.loc["random", "accuracy_max"]) == (0.25, 0.5)
    assert got.loc["weight", "runs"] == 1 and np.isnan(got.loc["weight", "accuracy_sd"])
    assert got.loc["weight", "accuracy_min"] == got.loc["weight", "accuracy_max"] == 0.5
    assert list(got.index) == ["unpruned", "weight", "random"]


def test_sweep_random_baseline_over_seeds_in_every_output(tmp_path, trained, monkeypatch):
    """Each seed's row is the accuracy of the model cut by that seed's random ranking; the
    text, JSON, CSV and figure give the mean and the spread of exactly those values; a rerun
    with more seeds measures only the new ones."""
    from reuse_analysis.prune import apply_cuts, connection_values, select_cuts
    from reuse_analysis.runtime import eval_subset, evaluate

    fig = tmp_path / "sweep.png"
    data = ["--data-dir", tmp_path / "data", "--images", 16]

    def args(seeds):
        return ["prune", trained, "--sweep", "--metrics", "weight,random", "--fractions",
                "0.75", "--seeds", seeds, "-o", fig, *data, "--json"]  # fmt: skip

    result = run(*args(4))
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    runs = pd.DataFrame(payload["rows"])
    chance = runs[runs.metric == "random"]
    assert chance.seed.tolist() == [0, 1, 2, 3] and payload["random_seeds"] == 4
    # each seed's accuracy is that of the model cut by its own random ranking
    ckpt = load_checkpoint(trained)
    structure = infer_structure(ckpt.state_dict)
    from reuse_analysis.data import load_dataset
    from reuse_analysis.models import create_model

    ds = load_dataset(ckpt.meta["dataset"]["name"], str(tmp_path / "data"))
    model = create_model(ckpt.arch, **ckpt.config)
    test = eval_subset(ds.test, None)
    for seed, acc in zip(chance.seed, chance.accuracy, strict=True):
        table = connection_values("random", ckpt.state_dict, structure, seed=int(seed))
        cut = apply_cuts(ckpt.state_dict, structure, select_cuts(table, 0.75))
        model.load_state_dict(cut)
        assert evaluate(model.eval(), test, ds, torch.device("cpu"))[1] == pytest.approx(acc)
    accs = chance.accuracy.to_numpy()
    losses = chance.loss.to_numpy()
    assert len(set(losses)) == 4  # the seeds cut different connections
    [summary] = [r for r in payload["summary"] if r["metric"] == "random"]
    assert summary["runs"] == 4
    assert summary["accuracy_mean"] == pytest.approx(accs.mean())
    assert summary["accuracy_sd"] == pytest.approx(accs.std(ddof=1), nan_ok=True)
    assert (summary["accuracy_min"], summary["accuracy_max"]) == (accs.min(), accs.max())
    # the text on stderr: the random baseline's mean and range next to the metric
    line = next(ln for ln in result.stderr.splitlines() if ln.startswith("F = 0.75"))
    assert f"random {100 * accs.mean():.2f} % (mean of 4 seeds, {100 * accs.min():.2f}–" in line
    assert f"{100 * accs.max():.2f} %" in line and "weight " in line
    # the CSV: one row per seed, each with its group's mean and spread
    csv = pd.read_csv(tmp_path / "sweep.csv")
    rand = csv[csv.metric == "random"]
    np.testing.assert_allclose(rand.accuracy, accs, rtol=1e-5)
    assert (rand.runs == 4).all()
    np.testing.assert_allclose(rand.accuracy_mean, accs.mean(), rtol=1e-5)
    np.testing.assert_allclose(rand.accuracy_min, accs.min(), rtol=1e-5)
    np.testing.assert_allclose(rand.accuracy_max, accs.max(), rtol=1e-5)
    # more seeds later: only the new one is evaluated, the first four come from the cache
    import reuse_analysis.runtime as runtime_module

    real, calls = runtime_module.evaluate, []

    def counted(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(runtime_module, "evaluate", counted)
    more = run(*args(5))
    assert more.exit_code == 0, more.output
    assert len(calls) == 1
    again = pd.DataFrame(json.loads(more.stdout)["rows"])
    np.testing.assert_allclose(again[again.metric == "random"].accuracy[:4], accs)


def test_seeds_without_sweep_is_refused(tmp_path, trained):
    result = run("prune", trained, "--fraction", "0.5", "--seeds", 3, "-o", tmp_path / "p.pt")
    assert result.exit_code == 2 and result.stderr.startswith("Error: --seeds applies to --sweep")
    assert not (tmp_path / "p.pt").exists()
