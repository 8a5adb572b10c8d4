"""The experiment workflows run by Luigi's local scheduler, with a small real trainer script."""
import json
import os
import sys
import textwrap
from pathlib import Path

import luigi
import pytest

from workflows.experiments import (AblationSuite, CmkpBenchmark, ProtocolFolds, SeedSuite, TrainRun,
                                   markdown_table, summarize_runs)

# Writes metrics.json like cmkp-train: f1@1 = seed + 10 for config "a", + 20 otherwise; f1@3 is
# the thread count it was given (must be 1); each call is appended to calls.txt next to the data;
# config "b" also writes the trainer's run.json with an epoch history.
FAKE_TRAINER = textwrap.dedent("""\
    import argparse, json, os, pathlib, sys
    p = argparse.ArgumentParser()
    for opt in ("--data", "--config", "--out", "--device", "--epochs", "--extra"):
        p.add_argument(opt)
    p.add_argument("--seed", type=int)
    p.add_argument("--resume", action="store_true")
    a = p.parse_args()
    assert pathlib.Path(a.data, "manifest.json").exists(), a.data
    with open(pathlib.Path(a.data).parent / "calls.txt", "a") as f:
        f.write(" ".join(sys.argv[1:]) + "\\n")
    if a.config == "broken":
        print("training failed: loss is nan")
        sys.exit(3)
    base = 10 if a.config == "a" else 20
    out = pathlib.Path(a.out)
    # what a killed run left behind, continued with --resume, shows in map@5
    resumed = a.resume and (out / "training_state.pt").exists()
    scores = {"f1@1": a.seed + base, "f1@3": float(os.environ["OMP_NUM_THREADS"]), "map@5": 60.0 if resumed else 50.0}
    (out / "metrics.json").write_text(json.dumps({"valid": scores, "test": scores}))
    if a.config == "b":  # cmkp-train's run.json: per-epoch CPU seconds and decoding speed
        history = [{"epoch": 1, "train_cpu_s": 10.0 * a.seed, "decode_posts_per_s": 100.0},
                   {"epoch": 2, "train_cpu_s": 20.0 * a.seed, "decode_posts_per_s": 200.0}]
        (out / "run.json").write_text(json.dumps({"seed": a.seed, "history": history}))
    print("epoch 1 loss 1.0")
""")


@pytest.fixture
def trainer(tmp_path):
    script = tmp_path / "fake_train.py"
    script.write_text(FAKE_TRAINER)
    return f"{sys.executable} {script}"


@pytest.fixture
def shards(tmp_path):
    path = tmp_path / "data" / "shards"
    path.mkdir(parents=True)
    (path / "manifest.json").write_text("{}")
    return path


def build(*tasks) -> bool:
    return luigi.build(list(tasks), local_scheduler=True, workers=1, log_level="WARNING")


def calls(shards) -> list[str]:
    path = shards.parent / "calls.txt"
    return path.read_text().splitlines() if path.exists() else []


def write_release(directory: Path, n: int = 23) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "valid_src.txt").write_text(
        "".join(f"post {i} words<sep>kp{i % 4}<sep>http://img/{i}.jpg\n" for i in range(n)))
    (directory / "valid_ocr_final.txt").write_text(
        "".join(("" if i % 3 else f"ocr {i}") + "\n" for i in range(n)))


def test_protocol_folds(tmp_path):
    release = tmp_path / "release"
    write_release(release)
    task = ProtocolFolds(data_dir=str(release), work_dir=str(tmp_path / "work"))
    assert build(task)
    folds = Path(task.output().path)
    dev = (folds / "valid_src.txt").read_text().splitlines()
    train = (folds / "train_src.txt").read_text().splitlines()
    assert [line.split()[1] for line in dev] == ["0", "10", "20"]
    assert len(train) == 20 and "post 1 words" in train[0] and "post 10 " not in "".join(train)
    ocr_dev = (folds / "valid_ocr_final.txt").read_text().split("\n")
    assert ocr_dev == ["ocr 0", "", "", ""]  # lines 0, 10, 20 (10 and 20 have no OCR) + final newline
    record = json.loads((folds / "folds.json").read_text())
    assert record["files"]["valid_src.txt"] == {
        "sha256": record["files"]["valid_src.txt"]["sha256"], "lines": 23, "train": 20, "valid": 3}
    assert sorted(p.name for p in folds.iterdir()) == [
        "folds.json", "train_ocr_final.txt", "train_src.txt", "valid_ocr_final.txt", "valid_src.txt"]


def test_folds_and_runs_are_renamed_after_an_fsync_of_every_file_and_the_rename_synced(tmp_path, trainer, shards,
                                                                                       monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
                        or real_fsync(fd))
    monkeypatch.setattr(os, "replace", lambda a, b: events.append(("replace", str(a), str(b))) or real_replace(a, b))
    write_release(tmp_path / "release")
    folds = ProtocolFolds(data_dir=str(tmp_path / "release"), work_dir=str(tmp_path / "work"))
    run = TrainRun(config="a", seed=1, shards_dir=str(shards), work_dir=str(tmp_path / "work"), trainer=trainer)
    assert build(folds, run)
    for final in (Path(folds.output().path), run.run_dir()):
        [at] = [i for i, event in enumerate(events) if event[0] == "replace" and event[2] == str(final)]
        source = Path(events[at][1])
        synced = {Path(event[1]).name for event in events[:at] if event[0] == "fsync" and Path(event[1]).parent == source}
        assert synced == set(os.listdir(final)) and len(synced) >= 3  # the trainer's files too
        assert events[at + 1] == ("fsync", str(final.parent))


def test_protocol_folds_rejects_misaligned_files(tmp_path):
    release = tmp_path / "release"
    write_release(release)
    (release / "valid_ocr_final.txt").write_text("too short\n")
    task = ProtocolFolds(data_dir=str(release), work_dir=str(tmp_path / "work"))
    assert not build(task)
    assert not (tmp_path / "work" / "folds").exists()
    assert not list((tmp_path / "work").glob("folds*"))  # no temporary directory left either


def test_ablation_suite_tables_mean_and_std(tmp_path, trainer, shards):
    work = tmp_path / "work"
    suite = AblationSuite(configs=("a", "b"), seeds=(1, 2), shards_dir=str(shards),
                          work_dir=str(work), trainer=trainer, epochs=2,
                          train_args="--extra 'x y'")
    assert build(suite)
    summary = json.loads((work / "results" / "ablation-suite.json").read_text())
    rows = {row["config"]: row for row in summary["rows"]}
    assert rows["a"]["f1@1"]["values"] == [11.0, 12.0]
    assert rows["a"]["f1@1"]["mean"] == pytest.approx(11.5)
    assert rows["a"]["f1@1"]["std"] == pytest.approx(0.5 ** 0.5)
    assert rows["b"]["f1@1"]["mean"] == pytest.approx(21.5)
    assert rows["a"]["f1@3"]["values"] == [1.0, 1.0]  # one thread was passed to every run
    assert rows["b"]["map@5"] == {"mean": 50.0, "std": 0.0, "values": [50.0, 50.0]}
    # epoch means per run: seed 1 -> 15 CPU-s/epoch, seed 2 -> 30; decoding 150 posts/s
    assert rows["b"]["train_cpu_s"]["values"] == [15.0, 30.0]
    assert rows["b"]["decode_posts_per_s"]["mean"] == 150.0
    assert rows["a"]["train_cpu_s"] is None  # this trainer wrote no epoch history for "a"
    table = (work / "results" / "ablation-suite.md").read_text()
    assert "| a | 11.50 ± 0.71 | 1.00 ± 0.00 | 50.00 ± 0.00 | – | – |" in table
    assert "| b | 21.50 ± 0.71 | 1.00 ± 0.00 | 50.00 ± 0.00 | 22.5 ± 10.6 | 150 ± 0 |" in table
    run_dir = work / "runs" / "a" / "seed-2"
    run = json.loads((run_dir / "workflow.json").read_text())
    assert run["cpu_s"] > 0 and run["command"][-2:] == ["--extra", "x y"]
    assert "epoch 1 loss" in (run_dir / "trainer-output.log").read_text()
    assert len(calls(shards)) == 4
    assert all("--epochs 2" in c and "--device cpu" in c for c in calls(shards))
    # a second build finds every output and trains nothing again
    assert build(suite)
    assert len(calls(shards)) == 4


def test_seed_suite_and_failed_run_leaves_nothing(tmp_path, trainer, shards):
    work = tmp_path / "work"
    assert build(SeedSuite(config="b", seeds=(3,), shards_dir=str(shards), work_dir=str(work),
                           trainer=trainer))
    summary = json.loads((work / "results" / "seeds-b.json").read_text())
    assert summary["rows"][0]["f1@1"] == {"mean": 23.0, "std": None, "values": [23.0]}
    assert "| b | 23.00 | 1.00 | 50.00 | 45.0 | 150 |" in (work / "results" / "seeds-b.md").read_text()

    assert not build(SeedSuite(config="broken", seeds=(1,), shards_dir=str(shards),
                               work_dir=str(work), trainer=trainer))
    assert not (work / "runs" / "broken").exists() or not any((work / "runs" / "broken").iterdir())
    assert not (work / "results" / "seeds-broken.json").exists()


def test_a_run_whose_worker_died_is_continued(tmp_path, trainer, shards):
    work = tmp_path / "work"
    partial = work / "runs" / "a" / "seed-1.partial"       # a killed worker's run directory
    partial.mkdir(parents=True)
    (partial / "training_state.pt").write_bytes(b"state")
    assert build(SeedSuite(config="a", seeds=(1,), shards_dir=str(shards), work_dir=str(work), trainer=trainer))
    assert json.loads((work / "runs" / "a" / "seed-1" / "metrics.json").read_text())["valid"]["map@5"] == 60.0
    assert not partial.exists()
    assert "--resume" in (shards.parent / "calls.txt").read_text()


def test_summarize_runs_orders_configs_and_formats_table():
    runs = [{"config": c, "seed": s, "cpu_s": 10.0 * s, "train_cpu_s": 1.0 * s,
             "decode_posts_per_s": None if c == "y" else 90.0,
             "metrics": {"valid": {"f1@1": f, "f1@3": 1.0, "map@5": 2.0}}}
            for c, s, f in [("z", 1, 30.0), ("y", 1, 20.0), ("z", 2, 32.0), ("z", 3, 34.0)]]
    rows = summarize_runs(runs, "valid")
    assert [r["config"] for r in rows] == ["z", "y"]
    assert rows[0]["f1@1"]["mean"] == 32.0 and rows[0]["f1@1"]["std"] == 2.0
    assert rows[0]["cpu_s"]["mean"] == 20.0
    table = markdown_table({"split": "valid", "threads": 1, "rows": rows})
    assert "| z | 32.00 ± 2.00 | 1.00 ± 0.00 | 2.00 ± 0.00 | 2.0 ± 1.0 | 90 ± 0 | 20 ± 10 | 1, 2, 3 |" in table
    assert "| y | 20.00 | 1.00 | 2.00 | 1.0 | – | 10 | 1 |" in table


def test_benchmark_defaults_are_the_protocol():
    task = CmkpBenchmark()
    assert task.suite_configs() == ("gen-cls-m3h-att", "gen-copy", "cls-max")
    assert task.seeds == (1, 2, 3) and task.threads == 1 and task.split == "valid"
    parsed = CmkpBenchmark.from_str_params({"configs": "cls-max,gen-copy", "seeds": "4,5"})
    assert parsed.configs == ("cls-max", "gen-copy") and parsed.seeds == (4, 5)


def test_cmkp_benchmark_end_to_end_through_build_dataset(tmp_path, trainer):
    """Folds -> pipeline.tasks.BuildDataset --source cmkp -> runs -> table, on a tiny release."""
    import h5py

    release = tmp_path / "release"
    write_release(release)
    (release / "valid_attribute_cleaned.txt").write_text("man dog grass field ball\n" * 23)
    work = tmp_path / "work"
    suite = CmkpBenchmark(data_dir=str(release), work_dir=str(work), trainer=trainer,
                          configs=("a",), seeds=(1, 2))
    assert build(suite)
    shards = work / "shards"
    assert json.loads((shards / "train" / "manifest.json").read_text())["posts"] == 20
    assert json.loads((shards / "valid" / "manifest.json").read_text())["posts"] == 3
    assert not (shards / "test").exists()
    with h5py.File(shards / "valid" / "shard-00000.h5") as f:
        assert [t.decode() for t in f["text"][:]] == [f"post {i} words" for i in (0, 10, 20)]
        assert sorted(json.loads(f.attrs["features"])) == ["attributes", "ocr"]
        assert not f["image_present"][:].any()
    summary = json.loads((work / "results" / "cmkp-benchmark.json").read_text())
    assert summary["shards"] == str(shards)
    assert summary["rows"][0]["f1@1"]["values"] == [11.0, 12.0]
    assert len(calls(shards)) == 2 and all(f"--data {shards} " in c for c in calls(shards))
