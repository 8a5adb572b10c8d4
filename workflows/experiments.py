"""Experiment suites: Luigi workflows that build the data, train every (config, seed) and tabulate.

    luigi --module workflows.experiments CmkpBenchmark --data-dir ../shared/data/cmkp \
        --configs gen-cls-m3h-att,gen-copy,cls-max --seeds 1,2,3 --local-scheduler

Task graph (one output per task, every output written to a temporary path, fsynced and renamed: pipeline/atomic.py):

    <Suite> (a SuiteTable: WORK/results/<name>.md)
      -> ResultsSummary (WORK/results/<name>.json: mean and std over seeds per config)
           -> TrainRun(config, seed) per pair (WORK/runs/<config>/seed-<S>/metrics.json, by `cmkp-train`)
                -> ProtocolShards (the dataset that pipeline.tasks.BuildDataset writes, WORK/shards/)
                     -> ProtocolFolds (WORK/folds/: the protocol's train_*.txt / valid_*.txt)
                or -> ExistingShards (a dataset directory given with --shards-dir)

The CMKP benchmark protocol: TRAIN = lines i with i % 10 != 0 of the release's
`valid_*.txt`, DEV = i % 10 == 0; DEV is the `valid` split of the built dataset. Suites:
`CmkpBenchmark` (three reference models x three seeds), `AblationSuite` (a list of configs) and
`SeedSuite` (one config over seeds); their defaults are the protocol's.
"""
from __future__ import annotations

import abc
import json
import math
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

import luigi

from model.metrics import HEADLINE
from durable.atomic import durable_replace
from pipeline.targets import DurableTarget
from pipeline.shards import sha256_file

STATUS_EVERY_S = 5.0  # how often a running TrainRun copies the trainer's last log line to its status
TRAINER_OUTPUT = "trainer-output.log"  # a run's stdout + stderr, in its run directory
WORKFLOW_RECORD = "workflow.json"  # the command and its measured wall and CPU seconds
# Per-epoch figures of cmkp-train's run.json "history" that the table averages when present.
EPOCH_FIGURES = ("train_cpu_s", "decode_posts_per_s")


class CommaListParameter(luigi.Parameter):
    """`a,b,c` on the command line and in luigi.cfg -> ('a', 'b', 'c')."""

    def parse(self, x):
        if isinstance(x, (list, tuple)):
            return tuple(str(v) for v in x)
        return tuple(v.strip() for v in str(x).split(",") if v.strip())

    def serialize(self, x):
        return ",".join(x)

    def normalize(self, x):
        return self.parse(x)


class SeedListParameter(CommaListParameter):
    """`1,2,3` -> (1, 2, 3)."""

    def parse(self, x):
        return tuple(int(v) for v in super().parse(x))

    def serialize(self, x):
        return ",".join(str(v) for v in x)


# ----------------------------------------------------------------------------------------------
# data


class ProtocolFolds(luigi.Task):
    """WORK/folds/: the benchmark protocol's TRAIN and DEV folds of one split of a CMKP release.

    Every `<source_split>_<kind>.txt` of data_dir (src, ocr, ocr_final, attribute_cleaned, ...) is
    split by 0-based line index i: DEV (written as `valid_<kind>.txt`) when i % dev_every == 0,
    TRAIN (`train_<kind>.txt`) otherwise. Lines are copied byte for byte. `folds.json` records the
    input hashes and the counts (train + dev = lines read, per file).
    """

    data_dir = luigi.Parameter(description="CMKP release directory, e.g. ../shared/data/cmkp")
    work_dir = luigi.Parameter(description="the experiment's working directory")
    source_split = luigi.Parameter(default="valid", description="the release split the folds come from")
    dev_every = luigi.IntParameter(default=10, description="line i goes to DEV when i % dev_every == 0")

    def output(self):
        return DurableTarget(str(Path(self.work_dir, "folds")))

    def run(self):
        inputs = sorted(Path(self.data_dir).glob(f"{self.source_split}_*.txt"))
        if not any(p.name == f"{self.source_split}_src.txt" for p in inputs):
            raise FileNotFoundError(f"no {self.source_split}_src.txt in {self.data_dir}: "
                                    "not a CMKP release directory")
        record = {"data_dir": str(Path(self.data_dir).resolve()), "source_split": self.source_split,
                  "dev_every": self.dev_every, "files": {}}
        files = {}
        for path in inputs:
            # split on b"\n" only, so line structure and bytes are exactly the release's
            lines = path.read_bytes().split(b"\n")
            if lines and lines[-1] == b"":
                lines.pop()
            files[path] = lines
        first = Path(self.data_dir, f"{self.source_split}_src.txt")
        for path, lines in files.items():
            if len(lines) != len(files[first]):
                raise ValueError(f"{path} has {len(lines)} lines but {first} has "
                                 f"{len(files[first])}: the release's files must be line-aligned")
        with self.output().temporary_path() as tmp:
            os.makedirs(tmp)
            for done, (path, lines) in enumerate(files.items()):
                kind = path.name[len(self.source_split) + 1:]
                train = [line for i, line in enumerate(lines) if i % self.dev_every != 0]
                dev = [line for i, line in enumerate(lines) if i % self.dev_every == 0]
                Path(tmp, f"train_{kind}").write_bytes(b"".join(line + b"\n" for line in train))
                Path(tmp, f"valid_{kind}").write_bytes(b"".join(line + b"\n" for line in dev))
                record["files"][path.name] = {"sha256": sha256_file(path), "lines": len(lines),
                                              "train": len(train), "valid": len(dev)}
                self.set_progress_percentage(int(100 * (done + 1) / len(inputs)))
            Path(tmp, "folds.json").write_text(json.dumps(record, indent=1) + "\n")


class ProtocolShards(luigi.Task):
    """The protocol's dataset: pipeline.tasks.BuildDataset --source cmkp on the folds (WORK/shards/).

    BuildDataset is a dynamic dependency: it reads the folds directory, which exists only after
    ProtocolFolds has run. The output is the dataset manifest, which BuildDataset writes last.
    """

    data_dir = luigi.Parameter()
    work_dir = luigi.Parameter()
    features = luigi.ListParameter(default=[], description="image feature groups to compute; the "
                                   "release's ocr and attributes are always carried")

    def requires(self):
        return ProtocolFolds(data_dir=self.data_dir, work_dir=self.work_dir)

    def output(self):
        return DurableTarget(str(Path(self.work_dir, "shards", "manifest.json")))

    def run(self):
        from pipeline.tasks import BuildDataset
        self.set_status_message("building the dataset with pipeline.tasks.BuildDataset")
        yield BuildDataset(source="cmkp", input=self.input().path, output=str(Path(self.work_dir, "shards")),
                           features=list(self.features))


class ExistingShards(luigi.ExternalTask):
    """A dataset directory built beforehand (its manifest.json marks it complete)."""

    path = luigi.Parameter()

    def output(self):
        return DurableTarget(str(Path(self.path, "manifest.json")))


# ----------------------------------------------------------------------------------------------
# training


class ExperimentTask(luigi.Task):
    """Parameters every task of a suite carries; suites pass them all down to TrainRun."""

    data_dir = luigi.Parameter(default="../shared/data/cmkp", description="CMKP release directory")
    shards_dir = luigi.Parameter(default="", description="use this built dataset instead of the "
                                 "CMKP protocol's (data_dir is then unused)")
    work_dir = luigi.Parameter(default="build/experiments/cmkp")
    features = luigi.ListParameter(default=[])
    trainer = luigi.Parameter(default="cmkp-train", description="the training command")
    epochs = luigi.IntParameter(default=0, description="--epochs for the trainer; 0: its default")
    device = luigi.Parameter(default="cpu", description="--device for the trainer: auto, cpu, cuda")
    threads = luigi.IntParameter(default=1, description="OMP_NUM_THREADS / MKL_NUM_THREADS")
    train_args = luigi.Parameter(default="", description="further trainer options, shell-quoted")
    split = luigi.Parameter(default="valid", description="the metrics.json split the table reports")

    def experiment_parameters(self) -> dict:
        return {name: getattr(self, name) for name in ExperimentTask.get_param_names()}

    def shards_task(self):
        if self.shards_dir:
            return ExistingShards(path=self.shards_dir)
        return ProtocolShards(data_dir=self.data_dir, work_dir=self.work_dir, features=self.features)

    def shards_path(self) -> str:
        return self.shards_dir or str(Path(self.work_dir, "shards"))


def run_name(config: str) -> str:
    """A directory name for a config given by name or as a file path."""
    name = Path(config).stem if Path(config).suffix in (".json", ".yaml", ".yml", ".toml") else config
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


class TrainRun(ExperimentTask):
    """WORK/runs/<config>/seed-<S>/metrics.json: one `cmkp-train` run in a subprocess.

    The trainer writes into a temporary run directory that is renamed when it succeeded; next to
    its own files (metrics.json, checkpoint, predictions, train.log, run.json) we keep
    trainer-output.log (its stdout and stderr) and workflow.json (the command and its measured wall
    and CPU seconds).
    """

    config = luigi.Parameter()
    seed = luigi.IntParameter()

    @property
    def resources(self):
        return {} if self.device == "cpu" else {"gpu": 1}

    def requires(self):
        return self.shards_task()

    def run_dir(self) -> Path:
        return Path(self.work_dir, "runs", run_name(self.config), f"seed-{self.seed}")

    def output(self):
        return DurableTarget(str(self.run_dir() / "metrics.json"))

    def command(self, out_dir: Path) -> list[str]:
        program, *args = shlex.split(self.trainer)
        # `cmkp-train` sits next to the interpreter when luigi runs from a virtualenv not on PATH
        beside = Path(sys.executable).parent / program
        if shutil.which(program) is None and beside.exists():
            program = str(beside)
        cmd = [program, *args, "--data", self.shards_path(), "--config", self.config,
               "--out", str(out_dir), "--seed", str(self.seed), "--device", self.device, "--resume"]
        if self.epochs:
            cmd += ["--epochs", str(self.epochs)]
        return cmd + shlex.split(self.train_args)

    def run(self):
        final = self.run_dir()
        # One partial directory per run, whichever worker or host runs it: a run whose worker died is
        # continued from its last finished epoch by the worker the scheduler gives it to next.
        tmp = final.with_name(f"{final.name}.partial")
        tmp.mkdir(parents=True, exist_ok=True)
        cmd = self.command(tmp)
        env = dict(os.environ, OMP_NUM_THREADS=str(self.threads), MKL_NUM_THREADS=str(self.threads))
        log_path = tmp / TRAINER_OUTPUT
        self.set_status_message(f"training {self.config} seed {self.seed}")
        start = time.monotonic()
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
            status, usage = self._wait(proc, log_path)
        wall = time.monotonic() - start
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            with open(log_path, errors="replace") as log:
                tail = "".join(deque(log, maxlen=20))
            shutil.rmtree(tmp, ignore_errors=True)
            raise RuntimeError(f"{shlex.join(cmd)} exited with {code}; last lines:\n{tail}")
        metrics_path = tmp / "metrics.json"
        if not metrics_path.exists():
            raise RuntimeError(f"{shlex.join(cmd)} succeeded but wrote no {metrics_path}")
        metrics = json.loads(metrics_path.read_text())
        if self.split not in metrics or not all(k in metrics[self.split] for k in HEADLINE):
            raise RuntimeError(f"{metrics_path} has no {self.split!r} scores with keys {HEADLINE}")
        run = {"config": self.config, "seed": self.seed, "command": cmd, "threads": self.threads,
               "wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime}
        (tmp / WORKFLOW_RECORD).write_text(json.dumps(run, indent=1) + "\n")
        shutil.rmtree(final, ignore_errors=True)
        durable_replace(tmp, final)  # the trainer's files and ours on disk before the run counts as done

    def _wait(self, proc, log_path: Path):
        """Wait for the trainer, copying its last log line to the task status; return its exit
        status and resource usage (os.wait4: this child's own CPU time)."""
        last = 0.0
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)  # reaped; keep Popen consistent
                return status, usage
            if time.monotonic() - last > STATUS_EVERY_S:
                last = time.monotonic()
                line = _last_line(log_path)
                if line:
                    self.set_status_message(f"{self.config} seed {self.seed}: {line}")
            time.sleep(0.2)


def _last_line(path: Path) -> str:
    """The last non-empty line (progress bars end lines with \\r) of a log, tail only."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 4096))
        text = f.read().decode("utf-8", errors="replace")
    parts = [p.strip() for p in re.split(r"[\r\n]", text) if p.strip()]
    return parts[-1][:200] if parts else ""


# ----------------------------------------------------------------------------------------------
# tables


UNRECORDED = "unrecorded"      # the commit of a run whose record names none


def summarize_runs(runs: list[dict], split: str) -> list[dict]:
    """Rows of mean and sample std (n - 1; None with a single seed) over seeds, per config, in
    the order configs first appear, with each seed's commit. Each run: {"config", "seed", "metrics"
    (metrics.json), "cpu_s" (the whole run), "commit" (`run_commit`'s; UNRECORDED where absent), and per
    EPOCH_FIGURES key its mean over epochs or None}."""
    by_config: dict[str, list[dict]] = {}
    for run in runs:
        by_config.setdefault(run["config"], []).append(run)
    rows = []
    for config, group in by_config.items():
        row = {"config": config, "seeds": [r["seed"] for r in group],
               "commits": [r.get("commit", UNRECORDED) for r in group]}
        series = {k: [float(r["metrics"][split][k]) for r in group] for k in HEADLINE}
        series["cpu_s"] = [float(r["cpu_s"]) for r in group]
        for key in EPOCH_FIGURES:
            values = [r.get(key) for r in group]
            series[key] = None if None in values else [float(v) for v in values]
        for key, values in series.items():
            row[key] = None if values is None else {
                "mean": statistics.fmean(values),
                "std": statistics.stdev(values) if len(values) > 1 else None, "values": values}
        rows.append(row)
    return rows


def _cell(stat: dict | None, digits: int) -> str:
    if stat is None:
        return "–"
    if stat["std"] is None or math.isnan(stat["std"]):
        return f"{stat['mean']:.{digits}f}"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def markdown_table(summary: dict) -> str:
    """The summary as a Markdown table: mean ± std over seeds."""
    lines = [f"Scores on `{summary['split']}` (percent, the CMKP authors' evaluator) and speed with "
             f"{summary['threads']} thread(s): mean ± sample std over seeds. CPU-s/epoch and "
             "posts/s are the trainer's per-epoch figures averaged over epochs; run CPU-s is the "
             "whole training run.",
             "",
             "| config | F1@1 | F1@3 | MAP@5 | train CPU-s/epoch | decode posts/s | run CPU-s | seeds |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for row in summary["rows"]:
        cells = ([_cell(row[k], 2) for k in HEADLINE] + [_cell(row["train_cpu_s"], 1)]
                 + [_cell(row["decode_posts_per_s"], 0), _cell(row["cpu_s"], 0)])
        lines.append(f"| {row['config']} | {' | '.join(cells)} | "
                     f"{', '.join(str(s) for s in row['seeds'])} |")
    return "\n".join(lines) + "\n"


def _epoch_means(record: dict) -> dict:
    """Mean over epochs of EPOCH_FIGURES from the trainer's run.json history (None if absent)."""
    history = record.get("history", [])
    out = {}
    for key in EPOCH_FIGURES:
        values = [h[key] for h in history if key in h]
        out[key] = statistics.fmean(values) if values else None
    return out


def read_run(task: TrainRun, target: DurableTarget) -> dict:
    """A finished TrainRun as summarize_runs takes it: config, seed, CPU seconds, epoch means, the commit of the
    code that trained it, metrics."""
    run_dir = Path(target.path).parent
    run = json.loads((run_dir / WORKFLOW_RECORD).read_text())
    path = run_dir / "run.json"                  # absent where a trainer writes none
    record = json.loads(path.read_text()) if path.exists() else {}
    return {"config": task.config, "seed": task.seed, "cpu_s": run["cpu_s"], **_epoch_means(record),
            "commit": run_commit(record), "metrics": json.loads(Path(target.path).read_text())}


def run_commit(record: dict) -> str:
    """The short commit a run.json record names for the code that trained the run (`+modified` where tracked
    files differed from it), or UNRECORDED (a run made before run.json recorded it, by code no checkout tracks,
    or by a trainer that writes no run.json)."""
    code = record.get("code") or {}
    if not code.get("commit"):
        return UNRECORDED
    return code["commit"][:7] + ("+modified" if code.get("modified") else "")


class ResultsSummary(ExperimentTask):
    """WORK/results/<name>.json: every run's scores and their mean and std over seeds per config."""

    name = luigi.Parameter()
    configs = CommaListParameter()
    seeds = SeedListParameter()

    def requires(self):
        return [TrainRun(config=c, seed=s, **self.experiment_parameters())
                for c in self.configs for s in self.seeds]

    def output(self):
        return DurableTarget(str(Path(self.work_dir, "results", f"{self.name}.json")))

    def run(self):
        runs = [read_run(task, target) for task, target in zip(self.requires(), self.input())]
        summary = {"name": self.name, "split": self.split, "threads": self.threads,
                   "shards": self.shards_path(), "configs": list(self.configs),
                   "seeds": list(self.seeds), "rows": summarize_runs(runs, self.split),
                   "runs": [{**{k: v for k, v in r.items() if k != "metrics"},
                             self.split: r["metrics"][self.split]} for r in runs]}
        with self.output().temporary_path() as tmp:
            Path(tmp).write_text(json.dumps(summary, indent=1) + "\n")


class SuiteTable(ExperimentTask):
    """WORK/results/<suite>.md: a suite's summary as a Markdown table. Base of the suites below."""

    seeds = SeedListParameter(default=(1, 2, 3))

    @abc.abstractmethod
    def suite_configs(self) -> tuple[str, ...]:
        """The configurations the suite trains."""

    def suite_name(self) -> str:
        return re.sub(r"(?<!^)(?=[A-Z])", "-", self.get_task_family()).lower()

    def requires(self):
        return ResultsSummary(name=self.suite_name(), configs=self.suite_configs(), seeds=self.seeds,
                              **self.experiment_parameters())

    def output(self):
        return DurableTarget(str(Path(self.work_dir, "results", f"{self.suite_name()}.md")))

    def run(self):
        summary = json.loads(Path(self.input().path).read_text())
        with self.output().temporary_path() as tmp:
            Path(tmp).write_text(markdown_table(summary))


class CmkpBenchmark(SuiteTable):
    """The real-data benchmark: gen-cls-m3h-att, gen-copy and cls-max over 3 seeds on the
    CMKP protocol (OCR and attributes from the release, no image features)."""

    configs = CommaListParameter(default=("gen-cls-m3h-att", "gen-copy", "cls-max"))

    def suite_configs(self):
        return self.configs


class AblationSuite(SuiteTable):
    """A list of configurations over seeds; by default the paper's Table 2 rows that need no image features."""

    configs = CommaListParameter(default=("cls-avg", "cls-max", "gen-att", "gen-copy", "cls-m3h-att", "gen-m3h-att",
                                          "gen-cls-m3h-att"))

    def suite_configs(self):
        return self.configs


class SeedSuite(SuiteTable):
    """One configuration over seeds."""

    config = luigi.Parameter(default="gen-cls-m3h-att")

    def suite_configs(self):
        return (self.config,)

    def suite_name(self) -> str:
        return f"seeds-{run_name(self.config)}"
