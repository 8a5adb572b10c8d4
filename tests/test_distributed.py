"""Data-parallel training: `torchrun --nproc-per-node 2 -m model.cli train` (gloo, CPU) against one process with
the same global batch size and seed; and a 2-rank run killed after an epoch and resumed, against an
uninterrupted one.

Without dropout and without batch statistics (gen-copy: no fusion layer), the two compute the same global
batch gradients and differ only in the order floating-point sums are taken: per-epoch losses agree to a
relative 1e-4 and the final scores to 0.01 point. A resumed 2-rank run (dropout on, so that each rank's own
random-number streams matter) ends bit-identical to the uninterrupted one.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fault_injection.test_training import RESUMABLE, assert_resumed_as_whole, finished_epochs, resumable_run_paths
from model.distributed import Ranks, global_term_scale
from test_model import TINY, write_dataset

ROOT = Path(__file__).resolve().parents[1]
CONFIG = {"base": "gen-copy", **TINY, "epochs": 4, "batch_size": 4, "patience": 10}


def train_command(data: Path, config: Path, out: Path, *extra: str) -> list[str]:
    return ["-m", "model.cli", "train", "--data", str(data), "--config", str(config), "--out", str(out),
            "--seed", "3", "--device", "cpu", "--threads", "1", "--quiet", *extra]


def torchrun(data: Path, config: Path, out: Path, *extra: str) -> subprocess.Popen:
    """Two gloo ranks of cmkp-train under torchrun."""
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                             *train_command(data, config, out, *extra)], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def kill_tree(pid: int) -> None:
    """SIGKILL a process and every process under it, as a lost host would stop them (torchrun starts each rank
    in a session of its own, so a process-group kill would miss them). Each is stopped first, so that none
    writes another epoch while the others are found."""
    def descendants(p: int) -> list[int]:
        children = [int(c) for task in Path(f"/proc/{p}/task").iterdir()
                    for c in (task / "children").read_text().split()]
        return [d for c in children for d in (c, *descendants(c))]
    os.kill(pid, signal.SIGSTOP)            # it starts no new rank from here on
    tree = [pid, *descendants(pid)]
    for victim in tree:
        os.kill(victim, signal.SIGSTOP)
    for victim in tree:
        os.kill(victim, signal.SIGKILL)


class TwoRanks(Ranks):
    """Rank 0 of two whose partner holds `other` of each count (what all_reduce would add)."""

    def __init__(self, other: list[float]):
        super().__init__(rank=0, world=2)
        object.__setattr__(self, "other", other)

    def sum(self, values):
        return [a + b for a, b in zip(values, self.other)]


def test_shares_and_term_weights():
    assert Ranks(rank=1, world=2).share([5, 6, 7, 8, 9]) == [6, 8]
    assert Ranks(rank=0, world=2).share([5, 6, 7, 8, 9]) == [5, 7, 9]
    assert Ranks(rank=1, world=4).share([5, 6]) == [5, 6]            # smaller than the world: whole on every rank
    # this rank: 3 of 4 labelled keyphrases, 5 of 6 keyphrases; averaged over 2 ranks by DDP -> n_r * 2 / N
    assert global_term_scale({"cls": 3, "gen": 5}, TwoRanks([1, 1])) == {"cls": 1.5, "gen": 5 * 2 / 6}
    assert global_term_scale({"cls": 0}, TwoRanks([0])) == {"cls": 0.0}


@pytest.mark.timeout(600)
def test_two_ranks_train_like_one_process_with_the_same_global_batch(tmp_path):
    data = write_dataset(tmp_path / "data")
    config = tmp_path / "config.json"
    config.write_text(json.dumps(CONFIG))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    subprocess.run([sys.executable, *train_command(data, config, single)], cwd=ROOT, env=env, check=True,
                   capture_output=True, timeout=300)
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          *train_command(data, config, ddp)], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "2 ranks" in run.stderr

    history = [[json.loads(line) for line in (d / "train.log").read_text().splitlines()] for d in (single, ddp)]
    assert len(history[0]) == len(history[1]) == CONFIG["epochs"]
    for one, two in zip(*history):
        assert two["train_loss"] == pytest.approx(one["train_loss"], rel=1e-4)
        assert two["valid_loss"] == pytest.approx(one["valid_loss"], rel=1e-4)
    metrics = [json.loads((d / "metrics.json").read_text())["valid"] for d in (single, ddp)]
    for name in ("f1@1", "f1@3", "map@5"):
        assert metrics[1][name] == pytest.approx(metrics[0][name], abs=0.01)
    # rank 0 alone wrote the run directory: one of each file, no second rank's leftovers
    assert sorted(p.name for p in ddp.iterdir()) == sorted(p.name for p in single.iterdir())


@pytest.mark.timeout(600)
def test_a_killed_two_rank_run_resumes_bit_identical_to_an_uninterrupted_one(tmp_path):
    data, config, whole, killed = resumable_run_paths(tmp_path)
    done = torchrun(data, config, whole)
    assert done.wait(timeout=300) == 0, done.stderr.read()[-3000:]

    run = torchrun(data, config, killed)
    while finished_epochs(killed) < 2 and run.poll() is None:     # kill -9, both ranks, after epoch 2
        time.sleep(0.02)
    kill_tree(run.pid)
    run.wait(timeout=30)
    kept = finished_epochs(killed)
    assert 2 <= kept < RESUMABLE["epochs"] and not (killed / "metrics.json").exists()
    resumed = torchrun(data, config, killed, "--resume")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()[-3000:]
    assert f"resuming {killed} after epoch {kept}" in resumed.stderr.read()

    a, _ = assert_resumed_as_whole(whole, killed)
    # each rank's own streams were kept: the ranks' dropout drew differently
    assert len(a["rank_rng"]) == 2 and not torch.equal(a["rank_rng"][0]["torch"], a["rank_rng"][1]["torch"])
