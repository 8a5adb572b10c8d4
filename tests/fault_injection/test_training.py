"""Training that can be killed, and loading nothing that runs code: a cmkp-train killed mid-run and resumed
ends bit-identical to an uninterrupted run; a non-finite loss or gradient stops the run (or is skipped and
counted); an older run's files are never reported; a checkpoint or weights file that needs pickle is refused
before any of it runs."""
from __future__ import annotations

import ast
import dataclasses
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from model import checkpoint
from model.config import CONFIGS
from model.model import KeyphraseModel
from model.train import (CHECKPOINT, TRAINING_STATE, NonFiniteError, Schedule, evaluate_best, load_checkpoint,
                         load_data, predict_split, train)
from test_model import TINY, write_dataset

ROOT = Path(__file__).resolve().parents[2]
# dropout on, so that a resumed run must also restore the random-number streams; stage 2 frozen, so that it
# must rebuild the optimizer over the decoder only; patience high, so that every epoch runs
RESUMABLE = {**TINY, "dropout": 0.1, "emb_dropout": 0.1, "epochs": 6, "warmup_epochs": 2, "patience": 10,
             "batch_size": 3, "freeze_classifier": True}
TIMING = ("train_cpu_s", "train_wall_s", "decode_posts_per_s")


def cmkp_train(data: Path, config: Path, out: Path, *extra: str) -> subprocess.Popen:
    """`cmkp-train` in a subprocess, one thread (a run's floating-point sums depend on the thread count)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", "from model.cli import train; train()", "--data", str(data),
                             "--config", str(config), "--out", str(out), "--seed", "1", "--device", "cpu",
                             "--threads", "1", "--quiet", *extra],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finished_epochs(run: Path) -> int:
    path = run / TRAINING_STATE
    return checkpoint.load(path)["schedule"]["epoch"] if path.exists() else 0


def assert_same_tensors(a, b, where=""):
    """Equal nested dicts/lists of tensors and plain values, tensors bit for bit."""
    if torch.is_tensor(a):
        assert torch.is_tensor(b) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same_tensors(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.mark.timeout(300)
def resumable_run_paths(tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    """A tiny dataset, the RESUMABLE config file, and where the uninterrupted and the killed run go."""
    data = write_dataset(tmp_path / "data")
    config = tmp_path / "resumable.json"
    config.write_text(json.dumps({"base": "gen-cls-m3h-att", **RESUMABLE}))
    return data, config, tmp_path / "whole", tmp_path / "killed"


def assert_resumed_as_whole(whole: Path, killed: Path) -> tuple[dict, dict]:
    """The resumed run's metrics, checkpoint and predictions are the uninterrupted run's bytes, and its training
    state the same tensors (timings aside); returns both training states."""
    assert (killed / "metrics.json").read_bytes() == (whole / "metrics.json").read_bytes()
    for name in (CHECKPOINT, "pred_valid.txt"):
        assert (killed / name).read_bytes() == (whole / name).read_bytes(), name
    a, b = checkpoint.load(whole / TRAINING_STATE), checkpoint.load(killed / TRAINING_STATE)
    for state in (a, b):
        for record in state["history"]:
            for key in TIMING:
                record.pop(key)
    assert_same_tensors(a, b)
    return a, b


def test_a_killed_run_resumes_to_the_same_metrics_and_tensors(tmp_path):
    data, config, whole, killed = resumable_run_paths(tmp_path)
    done = cmkp_train(data, config, whole)
    assert done.wait(timeout=150) == 0, done.stderr.read()

    run = cmkp_train(data, config, killed)
    while finished_epochs(killed) < 2 and run.poll() is None:     # kill -9 inside epoch 3 (stage 2, frozen)
        time.sleep(0.02)
    run.send_signal(signal.SIGKILL)
    run.wait(timeout=30)
    kept = finished_epochs(killed)
    assert 2 <= kept < RESUMABLE["epochs"] and not (killed / "metrics.json").exists()
    resumed = cmkp_train(data, config, killed, "--resume")
    assert resumed.wait(timeout=150) == 0, resumed.stderr.read()
    assert f"resuming {killed} after epoch {kept}" in resumed.stderr.read()

    a, b = assert_resumed_as_whole(whole, killed)
    assert [r["epoch"] for r in b["history"]] == list(range(1, RESUMABLE["epochs"] + 1))
    assert (killed / "train.log").read_text().count("\n") == RESUMABLE["epochs"]
    # the same run directory, resumed with another seed or config, is refused
    tiny = dataclasses.replace(CONFIGS["gen-cls-m3h-att"], **RESUMABLE, name="resumable")
    with pytest.raises(ValueError, match="seed 1, not 2"):
        train(tiny, data, killed, seed=2, device="cpu", log=lambda m: None, progress=False, resume=True)
    with pytest.raises(ValueError, match=r"config fields \['lr'\]"):
        train(dataclasses.replace(tiny, lr=0.5), data, killed, seed=1, device="cpu", log=lambda m: None,
              progress=False, resume=True)


def poisoned_forward(monkeypatch, poison, at_call: int = 2):
    """KeyphraseModel.forward whose `at_call`-th training call returns poison(losses)."""
    forward, calls = KeyphraseModel.forward, []

    def patched(self, batch):
        losses = forward(self, batch)
        if self.training:
            calls.append(1)
            if len(calls) == at_call:
                losses = poison(self, losses)
        return losses

    monkeypatch.setattr(KeyphraseModel, "forward", patched)


def nan_loss(model, losses):
    return {**losses, "loss": losses["loss"] * float("nan")}


def nan_gradient(model, losses):
    # sqrt at 0: a finite loss whose gradient is 0 x inf = NaN
    return {**losses, "loss": losses["loss"] + (0.0 * model.embedding.weight.sum()).sqrt()}


def tiny_config(**changes):
    return dataclasses.replace(CONFIGS["gen-cls-m3h-att"], **{**TINY, "epochs": 2, "batch_size": 3, **changes})


@pytest.mark.parametrize("poison, what", [(nan_loss, "loss nan"), (nan_gradient, "gradient norm nan")])
def test_a_non_finite_loss_or_gradient_stops_the_run(tmp_path, monkeypatch, poison, what):
    data = write_dataset(tmp_path / "data")
    poisoned_forward(monkeypatch, poison)
    weights_before = []
    monkeypatch.setattr(torch.optim.Adam, "step", lambda self, *a, **k: weights_before.append(1))
    with pytest.raises(NonFiniteError, match=f"epoch 1, batch 2: non-finite {what}"):
        train(tiny_config(), data, tmp_path / "run", device="cpu", log=lambda m: None, progress=False)
    assert weights_before == [1]                    # batch 1 stepped; batch 2 stopped before its step
    assert not (tmp_path / "run" / "metrics.json").exists() and not (tmp_path / "run" / CHECKPOINT).exists()


def test_a_skipped_non_finite_batch_is_counted(tmp_path, monkeypatch):
    data = write_dataset(tmp_path / "data")
    poisoned_forward(monkeypatch, nan_loss)
    metrics = train(tiny_config(on_nonfinite="skip"), data, tmp_path / "run", device="cpu", log=lambda m: None,
                    progress=False)
    log = [json.loads(line) for line in (tmp_path / "run" / "train.log").read_text().splitlines()]
    assert [r["skipped_batches"] for r in log] == [1, 0]
    assert all(torch.isfinite(torch.tensor(r["train_loss"])) for r in log)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text()) == metrics


def test_an_older_runs_files_are_never_reported(tmp_path, monkeypatch):
    data = write_dataset(tmp_path / "data")
    older = tmp_path / "older"
    train(tiny_config(epochs=1), data, older, seed=2, device="cpu", log=lambda m: None, progress=False)
    run = tmp_path / "run"
    run.mkdir()
    for name in (CHECKPOINT, "metrics.json", "pred_valid.txt", "run.json"):
        (run / name).write_bytes((older / name).read_bytes())
    # A new run that dies in its first epoch leaves none of the older run's files to be taken for its own.
    poisoned_forward(monkeypatch, nan_loss, at_call=1)
    messages = []
    with pytest.raises(NonFiniteError):
        train(tiny_config(), data, run, seed=1, device="cpu", log=messages.append, progress=False)
    # what is left is the new run's own featurisation record (written when it starts: model/provenance.py)
    assert sorted(p.name for p in run.iterdir()) == ["featurisation", "featurisation.json"]
    assert any("removed an earlier run's model.pt, metrics.json, run.json, pred_valid.txt" in m for m in messages)
    # The final evaluation refuses a checkpoint that is not this run's best epoch.
    (run / CHECKPOINT).write_bytes((older / CHECKPOINT).read_bytes())
    schedule = Schedule(epochs=2, patience=1, stage2_from=None, epoch=2, best=50.0, best_epoch=1)
    with pytest.raises(RuntimeError, match="holds epoch 1 of seed 2, not this run's best epoch 1 of seed 1"):
        evaluate_best(run, load_data(data, tiny_config(), False), schedule, 1, "cpu", 3)


class WritesAFile:
    """What a hostile pickle does when it is loaded: here, write a file."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return pathlib.Path.write_text, (self.target, "unpickling ran code")


def test_a_pickle_checkpoint_whose_unpickling_would_write_a_file_is_refused(tmp_path):
    from click.testing import CliRunner

    from model.cli import predict
    target = tmp_path / "written-by-unpickling"
    hostile = tmp_path / "model.pt"
    torch.save({"format": 2, "config": WritesAFile(target)}, hostile)
    with pytest.raises(ValueError, match="refused: it holds objects that only pickle can rebuild"):
        load_checkpoint(hostile)
    assert not target.exists()
    data = write_dataset(tmp_path / "data")
    res = CliRunner().invoke(predict, ["--model", str(hostile), "--data", str(data), "--split", "valid",
                                       "--out", str(tmp_path / "pred.txt")])
    assert res.exit_code != 0 and "refused" in res.output and not target.exists()
    (tmp_path / "run").mkdir()
    os.replace(hostile, tmp_path / "run" / TRAINING_STATE)       # a training state is read the same way
    with pytest.raises(ValueError, match="refused"):
        train(tiny_config(), data, tmp_path / "run", device="cpu", log=lambda m: None, progress=False, resume=True)
    assert not target.exists()
    # the payload is real: pickle itself would have written the file
    torch.load(tmp_path / "run" / TRAINING_STATE, weights_only=False)
    assert target.read_text() == "unpickling ran code"


def test_a_detectron2_pickle_is_checked_against_its_configured_sha256_before_unpickling(tmp_path):
    import pickle

    from pipeline.butd.detectron2_backend import Detectron2Extractor
    from pipeline.shards import sha256_file
    from pipeline.weights import WeightsNotTrustedError
    target = tmp_path / "written-by-unpickling"
    weights = tmp_path / "faster_rcnn_from_caffe_attr.pkl"
    weights.write_bytes(pickle.dumps({"model": WritesAFile(target)}))
    with pytest.raises(WeightsNotTrustedError, match=f"pickle file.*this file's is {sha256_file(weights)}"):
        Detectron2Extractor(str(weights))
    with pytest.raises(WeightsNotTrustedError, match="not the configured 00ff"):
        Detectron2Extractor(str(weights), weights_sha256="00ff")
    assert not target.exists()
    try:
        import detectron2  # noqa: F401
    except ImportError:     # past the check, the backend needs detectron2 (not installed here)
        with pytest.raises(ImportError, match="detectron2"):
            Detectron2Extractor(str(weights), weights_sha256=sha256_file(weights))


def test_checkpoints_load_across_versions_and_refuse_future_ones(tmp_path):
    data = write_dataset(tmp_path / "data")
    train(tiny_config(epochs=1), data, tmp_path / "run", device="cpu", log=lambda m: None, progress=False)
    saved = checkpoint.load(tmp_path / "run" / CHECKPOINT)
    split = load_data(data, tiny_config(), False).datasets["valid"]
    expected = (tmp_path / "run" / "pred_valid.txt").read_text().splitlines()

    def predictions(record) -> list[str]:
        checkpoint.save(record, tmp_path / "other.pt")
        return [";".join(kps) for kps in predict_split(load_checkpoint(tmp_path / "other.pt"), split, "cpu")]

    # format 1 (no version): b and the memory beside the state dict
    state = dict(saved["state_dict"])
    memory = {"idf": state.pop("memory.idf"), "indices": state.pop("memory.key_indices"),
              "values": state.pop("memory.key_values"), "labels": state.pop("memory.labels"), "k": 20, "power": 2.0,
              "n_posts": 8}
    old = {k: v for k, v in saved.items() if k != "format"}
    assert predictions({**old, "state_dict": state, "agg_weight": float(state.pop("agg_weight")),
                        "memory": memory}) == expected
    # a config field added since the checkpoint was written takes its default
    older_config = {k: v for k, v in saved["config"].items() if k != "on_nonfinite"}
    assert predictions({**saved, "config": older_config}) == expected
    with pytest.raises(ValueError, match=r"checkpoint format 3 is newer than this code reads \(1-2\)"):
        predictions({**saved, "format": 3})
    with pytest.raises(ValueError, match=r"config fields \['from_the_future'\] are unknown"):
        predictions({**saved, "config": {**saved["config"], "from_the_future": 1}})


def test_every_torch_load_in_the_repository_reads_weights_only():
    calls = []
    for path in ROOT.rglob("*.py"):
        if any(part.startswith(".") or part in ("build", "node_modules") for part in path.relative_to(ROOT).parts):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load" \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":
                weights_only = [k.value for k in node.keywords if k.arg == "weights_only"]
                calls.append((f"{path.relative_to(ROOT)}:{node.lineno}", weights_only))
    assert len(calls) >= 3                             # model/checkpoint.py, pipeline/weights.py, attributes.py
    unsafe = [where for where, kw in calls if not (kw and isinstance(kw[0], ast.Constant) and kw[0].value is True)]
    # the one exception unpickles on purpose, above, to show that a refused payload is real
    assert [where.split(":")[0] for where in unsafe] == ["tests/fault_injection/test_training.py"]
