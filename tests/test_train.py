"""Training: exact resume after an interruption, DDP on two CPU processes, evaluate."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from reuse_analysis.checkpoint import load_checkpoint
from reuse_analysis.cli import cli
from reuse_analysis.train import TrainConfig, TrainingError, train

TINY = {"growth_rate": 4, "block_config": (2, 2), "num_init_features": 8}


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory):
    """96 training and 32 test images, 16×16 RGB, 4 classes with a learnable colour cue."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("data") / "tiny.npz"

    def split(n):
        y = rng.integers(0, 4, n)
        x = rng.integers(0, 60, (n, 16, 16, 3), dtype=np.uint8)
        x[np.arange(n), :, :, y % 3] += (60 * (1 + y // 3)).astype(np.uint8)[:, None, None]
        return x, y

    x_train, y_train = split(96)
    x_test, y_test = split(32)
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path


def _cfg(tiny_npz, out, **kw):
    settings = {
        "arch": "densenet_bc_100",
        "dataset": f"npz:{tiny_npz}",
        "data_dir": str(Path(out).parent / "cache"),
        "epochs": 3,
        "batch_size": 16,
        "out": str(out),
        "device": "cpu",
        "model_overrides": TINY,
        "checkpoint_minutes": 1e9,
    }
    return TrainConfig(**{**settings, **kw})


def _weights(path):
    return load_checkpoint(path).state_dict


def test_interrupted_and_resumed_run_matches_uninterrupted(tmp_path, tiny_npz):
    straight = tmp_path / "a" / "m.pt"
    train(_cfg(tiny_npz, straight))

    resumed = tmp_path / "b" / "m.pt"

    def interrupt(epoch, step):
        if (epoch, step) == (1, 2):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(_cfg(tiny_npz, resumed), on_step=interrupt)
    assert resumed.with_suffix(".train.pt").is_file()
    position = torch.load(resumed.with_suffix(".train.pt"), weights_only=True)["position"]
    assert (position["epoch"], position["step"]) == (1, 3)
    train(_cfg(tiny_npz, resumed, resume=True))

    a, b = _weights(straight), _weights(resumed)
    assert set(a) == set(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    log_a = (tmp_path / "a" / "m.log.csv").read_text().splitlines()
    log_b = (tmp_path / "b" / "m.log.csv").read_text().splitlines()
    assert len(log_a) == len(log_b) == 4
    # identical numbers; only the timing columns differ
    assert [x.split(",")[:6] for x in log_a] == [x.split(",")[:6] for x in log_b]


def test_sigterm_stops_the_command_cleanly_and_resume_finishes(tmp_path, tiny_npz):
    """`kill` (SIGTERM) stops `train` like Ctrl-C: state saved, exit 130, no traceback."""
    out = tmp_path / "m.pt"
    args = [
        sys.executable, "-m", "reuse_analysis", "train", "--arch", "densenet_bc_100",
        "--dataset", f"npz:{tiny_npz}", "--data-dir", str(tmp_path / "cache"),
        "--epochs", "10", "--batch-size", "16", "--limit-train", "64", "--out", str(out),
        "--device", "cpu", "--checkpoint-minutes", "0",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True, env=env)
    state = out.with_suffix(".train.pt")
    deadline = time.monotonic() + 120
    while not state.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr and "--resume" in stderr
    position = torch.load(state, weights_only=True)["position"]
    assert (position["epoch"], position["step"]) < (10, 0)
    done = subprocess.run(
        [*args, "--epochs", "10", "--resume"], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert load_checkpoint(out).meta["epoch"] == 10


def test_checkpoint_records_everything_needed(tmp_path, tiny_npz):
    out = tmp_path / "m.pt"
    train(_cfg(tiny_npz, out, epochs=2, snapshot_epochs=(1,), augment=False))
    ckpt = load_checkpoint(out)
    assert ckpt.arch == "densenet_bc_100"
    assert ckpt.config["block_config"] == [2, 2] and ckpt.config["num_classes"] == 4
    assert ckpt.config["drop_rate"] == 0.2  # the paper's dropout without augmentation
    assert ckpt.meta["epoch"] == 2
    assert ckpt.meta["dataset"]["name"].startswith("npz:")
    assert len(ckpt.meta["history"]) == 2
    assert 0 <= ckpt.meta["test_acc"] <= 1
    assert (tmp_path / "m-epoch1.pt").is_file()
    full = torch.load(out.with_suffix(".train.pt"), weights_only=True)
    for key in ("optimizer", "rng", "position", "state_dict", "config"):
        assert key in full
    # the milestones of a 2-epoch run: lr 0.1 for epoch 1, then 0.01
    assert [round(h["lr"], 6) for h in ckpt.meta["history"]] == [0.1, 0.01]


def test_resume_refuses_other_settings(tmp_path, tiny_npz):
    out = tmp_path / "m.pt"
    train(_cfg(tiny_npz, out, epochs=1))
    from reuse_analysis.train import TrainingError

    with pytest.raises(TrainingError, match="lr"):
        train(_cfg(tiny_npz, out, epochs=1, resume=True, lr=0.05))


def test_train_and_evaluate_commands(tmp_path, tiny_npz):
    out = tmp_path / "cli.pt"
    runner = CliRunner()
    args = [
        "train", "--arch", "densenet_bc_100", "--dataset", f"npz:{tiny_npz}",
        "--data-dir", str(tmp_path / "cache"), "--epochs", "1", "--batch-size", "32",
        "--out", str(out), "--device", "cpu",
    ]  # fmt: skip
    # the CLI trains the full-size preset: keep it to one small epoch
    result = runner.invoke(cli, [*args, "--limit-train", "32"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "test accuracy" in result.stderr
    assert out.with_suffix(".log.csv").read_text().startswith("epoch,lr,train_loss")
    ev = runner.invoke(cli, ["evaluate", str(out), "--json", "--data-dir", str(tmp_path / "cache")])
    assert ev.exit_code == 0, ev.output
    payload = json.loads(ev.stdout)
    assert payload["images"] == 32 and payload["dataset"] == f"npz:{tiny_npz}"
    recorded = load_checkpoint(out).meta["test_acc"]
    assert payload["accuracy"] == pytest.approx(recorded)
    card = runner.invoke(
        cli,
        ["card", str(out), "--command", "reuse-analysis train ...", "--notes", "tiny",
         "--data-dir", str(tmp_path / "cache")],
    )  # fmt: skip
    assert card.exit_code == 0, card.output
    made = json.loads(out.with_suffix(".card.json").read_text())
    assert made["arch"] == "densenet_bc_100" and made["epochs"] == 1
    assert made["test_images"] == 32 and made["test_accuracy"] == pytest.approx(recorded, abs=1e-4)
    assert made["config"]["growth_rate"] == 12 and made["command"].startswith("reuse-analysis")
    assert made["data"]["name"] == f"npz:{tiny_npz}" and "cores" in made["hardware"]
    assert [s["epochs"] for s in made["trained_on"]] == [[1, 1]]
    assert made["trained_on"][0]["hardware"] == made["hardware"]


def test_evaluate_on_a_data_set_the_model_cannot_read(tmp_path, tiny_npz):
    out = tmp_path / "m.pt"
    train(_cfg(tiny_npz, out, epochs=1))
    gray = tmp_path / "gray.npz"
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 255, (8, 16, 16), dtype=np.uint8), np.arange(8) % 4
    np.savez(gray, x_train=x, y_train=y, x_test=x, y_test=y)
    many = tmp_path / "many.npz"
    x3 = rng.integers(0, 255, (8, 16, 16, 3), dtype=np.uint8)
    np.savez(many, x_train=x3, y_train=np.arange(8), x_test=x3, y_test=np.arange(8))
    runner = CliRunner()
    for data, says in ((gray, "built for 3-channel images"), (many, "built for 4 classes")):
        r = runner.invoke(
            cli, ["evaluate", str(out), "--dataset", f"npz:{data}", "--data-dir", str(tmp_path)]
        )
        assert r.exit_code == 2 and r.stderr.startswith("Error: ") and says in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1


def test_unknown_arch_and_dataset_are_clean_errors(tmp_path, tiny_npz):
    runner = CliRunner()
    r = runner.invoke(cli, ["train", "--arch", "nope", "--dataset", f"npz:{tiny_npz}",
                            "--out", str(tmp_path / "x.pt")])  # fmt: skip
    assert r.exit_code == 2 and r.stderr.startswith("Error: unknown model 'nope'")
    r = runner.invoke(cli, ["train", "--arch", "densenet40", "--dataset", "npz:/nonexistent.npz",
                            "--out", str(tmp_path / "x.pt")])  # fmt: skip
    assert r.exit_code == 2 and "no such file" in r.stderr


def test_ddp_two_cpu_processes(tmp_path, tiny_npz):
    """torchrun with gloo: both ranks end identical, one checkpoint, and it evaluates."""
    out = tmp_path / "ddp.pt"
    code = (
        "import sys\n"
        "from reuse_analysis.train import TrainConfig, train\n"
        f"cfg = TrainConfig(arch='densenet_bc_100', dataset='npz:{tiny_npz}', "
        f"data_dir='{tmp_path / 'cache'}', epochs=2, batch_size=16, out='{out}', "
        f"device='cpu', model_overrides={TINY!r})\n"
        "s = train(cfg)\n"
        "import os, pathlib\n"
        f"pathlib.Path('{tmp_path}', 'rank' + os.environ['RANK']).write_text("
        "str(s.get('replicas_identical')))\n"
    )
    script = tmp_path / "run.py"
    script.write_text(code)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
         "--master-port", "29533", str(script)],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert [(tmp_path / f"rank{r}").read_text() for r in (0, 1)] == ["True", "True"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix in (".pt", ".csv")) == [
        "ddp.log.csv",
        "ddp.pt",
        "ddp.reuse.csv",
        "ddp.train.pt",
    ]
    assert len(out.with_suffix(".log.csv").read_text().splitlines()) == 3
    from reuse_analysis.evaluation import evaluate_checkpoint

    res = evaluate_checkpoint(out, data_dir=str(tmp_path / "cache"), device="cpu")
    assert res["accuracy"] == pytest.approx(load_checkpoint(out).meta["test_acc"])


def test_imagenet_preset_trains_on_a_large_image_folder(tmp_path):
    """Large images stream from disk with 224-pixel crops (tiny model, two classes)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in ("a", "b"):
            d = tmp_path / "imgs" / split / c
            d.mkdir(parents=True)
            for j in range(4):
                pixels = rng.integers(0, 255, (80, 96, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(d / f"{j}.jpg")
    cfg = TrainConfig(
        arch="densenet121",
        dataset=f"imagefolder:{tmp_path / 'imgs'}",
        data_dir=str(tmp_path / "cache"),
        epochs=1,
        batch_size=4,
        out=str(tmp_path / "in.pt"),
        device="cpu",
        model_overrides={"growth_rate": 4, "block_config": (2, 2), "num_init_features": 8},
    )
    summary = train(cfg)
    ckpt = load_checkpoint(tmp_path / "in.pt")
    assert ckpt.config["stem"] == "imagenet" and ckpt.config["num_classes"] == 2
    assert ckpt.meta["dataset"]["image_size"] == 224
    assert 0 <= summary["test_acc"] <= 1


def test_learning_rate_schedules():
    """The three schedules' curves, at the positions that define them."""
    from reuse_analysis.train import learning_rate

    paper = [learning_rate("paper", 0.1, 8, e, 0, 10) for e in range(8)]
    assert paper == pytest.approx([0.1] * 4 + [0.01] * 2 + [0.001] * 2)
    assert learning_rate("paper", 0.1, 8, 3, 9, 10) == pytest.approx(0.1)  # constant in epoch
    cos = [learning_rate("cosine", 0.2, 4, e, s, 25) for e in range(4) for s in range(25)]
    assert cos[0] == pytest.approx(0.2)
    assert cos[50] == pytest.approx(0.1)  # half way: half the peak
    assert all(a > b for a, b in itertools.pairwise(cos))
    one = [learning_rate("onecycle", 0.1, 4, e, s, 25) for e in range(4) for s in range(25)]
    assert one[0] == pytest.approx(0.1 / 25)
    assert max(one) == pytest.approx(0.1) and one.index(max(one)) == 15  # 15 % of 100 steps
    assert all(a < b for a, b in itertools.pairwise(one[:16]))
    assert all(a > b for a, b in itertools.pairwise(one[15:]))
    assert one[-1] < 0.001
    with pytest.raises(Exception, match="unknown schedule"):
        learning_rate("step", 0.1, 4, 0, 0, 25)


def test_schedule_is_used_and_recorded(tmp_path, tiny_npz):
    out = tmp_path / "m.pt"
    train(_cfg(tiny_npz, out, epochs=2, schedule="cosine", label_smoothing=0.1))
    meta = load_checkpoint(out).meta
    assert meta["train_config"]["schedule"] == "cosine"
    assert meta["train_config"]["label_smoothing"] == 0.1
    # the logged lr is the one of each epoch's first step: 0.1, then cos(pi/2) -> 0.05
    assert [h["lr"] for h in meta["history"]] == pytest.approx([0.1, 0.05])
    with pytest.raises(TrainingError, match="schedule"):
        train(_cfg(tiny_npz, out, epochs=2, resume=True, schedule="onecycle"))


def test_reuse_table_recorded_after_every_epoch(tmp_path, tiny_npz):
    """The .reuse.csv holds the weight table at initialisation and after each epoch; the
    last one is the table of the saved model."""
    import pandas as pd

    from reuse_analysis.analysis import analyze

    out = tmp_path / "m.pt"
    train(_cfg(tiny_npz, out, epochs=2))
    log = pd.read_csv(tmp_path / "m.reuse.csv")
    assert sorted(log["epoch"].unique()) == [0, 1, 2]
    final = analyze(out).table
    last = log[log["epoch"] == 2].reset_index(drop=True)
    for column in ("block", "source", "target", "target_kind"):
        assert list(last[column]) == list(final[column])
    np.testing.assert_allclose(last["mean_abs_weight"], final["mean_abs_weight"], rtol=1e-9)
    first = log[log["epoch"] == 0]["mean_abs_weight"].to_numpy()
    assert not np.allclose(first, last["mean_abs_weight"].to_numpy())  # training moved it


@pytest.mark.parametrize(
    ("forward", "position"),
    [(10, (1, 3)), (7, (1, 0))],
    ids=["mid-step", "during-evaluation"],
)
def test_signal_during_a_step_resumes_bitwise(tmp_path, tiny_npz, forward, position):
    """SIGTERM in the middle of a forward pass, of a training step or of the epoch's
    evaluation: the step (or the epoch's evaluation and saves) finishes, the state is saved
    after it, and the resumed run equals an uninterrupted one in every tensor (batch-norm
    statistics included: the interrupted batch is not run twice)."""
    straight = tmp_path / "a" / "m.pt"
    train(_cfg(tiny_npz, straight, epochs=2))
    resumed = tmp_path / "b" / "m.pt"
    calls = {"n": 0}

    def kill_in_forward(module, inputs):
        calls["n"] += 1
        # 6 training forwards per epoch, then 1 of evaluation: 7 = evaluating after epoch
        # 1, 10 = epoch 2, step 3
        if calls["n"] == forward:
            os.kill(os.getpid(), signal.SIGTERM)

    def init(model):
        model.features.denseblock1.register_forward_pre_hook(kill_in_forward)

    with pytest.raises(KeyboardInterrupt):
        train(_cfg(tiny_npz, resumed, epochs=2), init=init)
    saved = torch.load(resumed.with_suffix(".train.pt"), weights_only=True)["position"]
    assert (saved["epoch"], saved["step"]) == position
    train(_cfg(tiny_npz, resumed, epochs=2, resume=True))
    a, b = _weights(straight), _weights(resumed)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_bf16_autocast_training_follows_fp32(tmp_path, tiny_npz):
    """bf16 autocast on the CPU: the loss curve stays within noise of fp32's, and the
    weights differ from fp32's (autocast did change the arithmetic)."""
    import pandas as pd

    runs = {}
    for amp in (False, True):
        out = tmp_path / f"amp{amp}" / "m.pt"
        train(_cfg(tiny_npz, out, epochs=3, amp=amp))
        runs[amp] = (pd.read_csv(out.with_suffix(".log.csv")), _weights(out))
    fp32, bf16 = runs[False][0], runs[True][0]
    np.testing.assert_allclose(bf16["train_loss"], fp32["train_loss"], atol=0.1)
    assert bf16["train_loss"].iloc[-1] < bf16["train_loss"].iloc[0]
    key = "features.conv0.weight"
    assert not torch.equal(runs[False][1][key], runs[True][1][key])


def test_resume_from_a_committed_state_in_a_fresh_clone(tmp_path, tiny_npz):
    """A run stopped, its .train.pt committed, cloned elsewhere and resumed there ends with
    the weights of a run that never stopped (what a run spread over sessions relies on)."""
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    straight = tmp_path / "straight" / "m.pt"
    train(_cfg(tiny_npz, straight, epochs=2))
    repo = tmp_path / "repo"
    (repo / "trained_models").mkdir(parents=True)
    out = repo / "trained_models" / "m.pt"

    def stop(epoch, step):
        if (epoch, step) == (0, 4):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(_cfg(tiny_npz, out, epochs=2, data_dir=str(tmp_path / "c1")), on_step=stop)
    subprocess.run([*git, "init", "-q", str(repo)], check=True)
    subprocess.run([*git, "-C", str(repo), "add", "trained_models/m.train.pt"], check=True)
    subprocess.run([*git, "-C", str(repo), "commit", "-qm", "state"], check=True)
    clone = tmp_path / "clone"
    subprocess.run([*git, "clone", "-q", str(repo), str(clone)], check=True)
    again = clone / "trained_models" / "m.pt"
    train(_cfg(tiny_npz, again, epochs=2, resume=True, data_dir=str(tmp_path / "c2")))
    a, b = _weights(straight), _weights(again)
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.slow
def test_compiled_bf16_training_saves_plain_weights(tmp_path, tiny_npz, capsys):
    """--amp --compile on a DenseNet: the fused blocks' compiled kernels run (the first
    steps compile them, and stderr says what that cost once), the loss falls, and the
    files hold the plain module's keys."""
    from reuse_analysis.models import _efficient

    out = tmp_path / "m.pt"
    try:
        train(_cfg(tiny_npz, out, epochs=2, amp=True, compile=True, channels_last=True))
        assert _efficient.compiled_kernels_enabled()
    finally:
        _efficient.use_compiled_kernels(False)
    err = capsys.readouterr().err
    assert err.count("--compile: the first step took") == 1
    assert "No CUDA runtime" not in err
    history = load_checkpoint(out).meta["history"]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert {(r["precision"], r["compiled"]) for r in history} == {("bf16", True)}
    keys = set(_weights(out))
    assert keys == set(_weights(tmp_path / "m.train.pt")) and not any(
        "_orig_mod" in k for k in keys
    )
    from reuse_analysis.models import create_model

    model = create_model("densenet_bc_100", num_classes=4, **TINY)
    model.load_state_dict(_weights(out))  # strict: the toolkit's own DenseNet loads it


def test_cpu_bf16_detection_reads_the_flags():
    from reuse_analysis.runtime import cpu_has_bf16

    amx = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f amx_bf16 amx_tile\n"
    avx2 = "processor\t: 0\nflags\t\t: fpu sse avx2 fma\n"
    assert cpu_has_bf16(amx) is True
    assert cpu_has_bf16(avx2) is False
    assert cpu_has_bf16("no flags line here") is None


def test_amp_without_bf16_units_says_so(tmp_path, tiny_npz, monkeypatch, capsys):
    import reuse_analysis.train as train_module

    monkeypatch.setattr(train_module, "cpu_has_bf16", lambda: False)
    train(_cfg(tiny_npz, tmp_path / "m.pt", epochs=1, amp=True))
    assert "without bf16 units" in capsys.readouterr().err


def test_dynamics_command_on_a_runs_reuse_log(tmp_path, tiny_npz):
    """`dynamics` reads the .reuse.csv a run wrote: one row per epoch (0 = initialisation)
    with the statistics of that epoch's table, and the figure; a CSV that is no reuse log
    gets one Error line and no figure."""
    import pandas as pd

    from reuse_analysis.dynamics import epoch_statistics

    out = tmp_path / "m.pt"
    train(_cfg(tiny_npz, out, epochs=2))
    log = tmp_path / "m.reuse.csv"
    figure = tmp_path / "dyn.png"
    result = CliRunner().invoke(cli, ["dynamics", str(log), "-o", str(figure), "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    rows = payload["epochs"]
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    # the untrained reference is drawn from the run's own checkpoint beside the log
    assert payload["architecture"]["source"] == "m.pt beside the log"
    assert payload["architecture"]["arch"] == "densenet_bc_100"
    assert payload["untrained"]["seeds"] == 20
    # the log names the architecture the run trained, in every row
    assert set(pd.read_csv(log)["arch"]) == {"densenet_bc_100"}
    last = pd.read_csv(log).query("epoch == 2").reset_index(drop=True)
    expected = epoch_statistics(last)
    for key, value in expected.items():  # NaN (e.g. no layer with 3 sources) is JSON null
        got = float("nan") if rows[2][key] is None else rows[2][key]
        assert got == pytest.approx(value, nan_ok=True), key
    assert rows[2]["classifier_focus"] is not None
    assert figure.stat().st_size > 0
    bad = tmp_path / "other.csv"
    bad.write_text("a,b\n1,2\n")
    refused = CliRunner().invoke(cli, ["dynamics", str(bad), "-o", str(tmp_path / "no.png")])
    assert refused.exit_code == 2 and refused.stderr.startswith("Error: ")
    assert len(refused.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "no.png").exists()


def test_a_reuse_log_from_before_the_arch_column_resumes_and_still_draws(tmp_path, tiny_npz):
    """A run resumed from a log written without the arch column: the old rows keep an empty
    one, the new rows name the architecture, and `dynamics` reads both."""
    import pandas as pd

    out = tmp_path / "m.pt"

    def interrupt(epoch, step):
        if (epoch, step) == (1, 2):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(_cfg(tiny_npz, out), on_step=interrupt)
    log = tmp_path / "m.reuse.csv"
    old = pd.read_csv(log).drop(columns="arch")
    assert sorted(old.epoch.unique()) == [0, 1]
    old.to_csv(log, index=False)  # as a run before the column existed wrote it
    train(_cfg(tiny_npz, out, resume=True))
    resumed = pd.read_csv(log)
    assert sorted(resumed.epoch.unique()) == [0, 1, 2, 3]
    assert resumed[resumed.epoch <= 1].arch.isna().all()
    assert (resumed[resumed.epoch >= 2].arch == "densenet_bc_100").all()
    result = CliRunner().invoke(cli, ["dynamics", str(log), "-o", str(tmp_path / "d.png")])
    assert result.exit_code == 0, result.output
    assert "20 seeds of densenet_bc_100 (m.pt beside the log)" in result.stderr
    # without the files beside it, the rows that name it are enough only if the preset
    # fits; this run overrode the preset's config, so --arch or the files are needed
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "m.reuse.csv").write_text(log.read_text())
    refused = CliRunner().invoke(cli, ["dynamics", str(alone / "m.reuse.csv"), "-o",
                                       str(alone / "d.png")])  # fmt: skip
    assert refused.exit_code == 2 and "the log's arch column" in refused.stderr
    assert not (alone / "d.png").exists()


def test_each_epoch_records_how_it_was_trained_and_the_card_groups_them(tmp_path, tiny_npz):
    """A run resumed on another machine or with other flags: every epoch's row says the
    precision, compile flag, threads and machine of the process that finished it, and the
    card lists the runs of epochs trained alike (older rows count as unrecorded)."""
    import csv

    from reuse_analysis.modelcard import trained_on
    from reuse_analysis.runtime import hardware

    out = tmp_path / "m.pt"
    train(_cfg(tiny_npz, out, epochs=2))
    history = load_checkpoint(out).meta["history"]
    threads = torch.get_num_threads()
    for row in history:
        assert (row["precision"], row["compiled"], row["threads"]) == ("fp32", False, threads)
        assert row["hardware"] == hardware()
    with open(out.with_suffix(".log.csv"), newline="") as fh:
        logged = list(csv.DictReader(fh))
    assert [r["precision"] for r in logged] == ["fp32", "fp32"]
    assert logged[0]["hardware"] == hardware()

    older = [{"epoch": 1, "seconds": 10.0}, {"epoch": 2, "seconds": 5.0}]
    bf16 = {**history[0], "precision": "bf16", "epoch": 3, "seconds": 2.5}
    fp32 = [{**history[0], "epoch": 4, "seconds": 1.0}, {**history[1], "epoch": 5, "seconds": 1.5}]
    segments = trained_on([*older, bf16, *fp32])
    assert [s["epochs"] for s in segments] == [[1, 2], [3, 3], [4, 5]]
    assert segments[0]["hardware"] == "unrecorded" and segments[0]["seconds"] == 15.0
    assert [s["precision"] for s in segments[1:]] == ["bf16", "fp32"]
    assert segments[2]["seconds"] == 2.5 and segments[2]["threads"] == threads
