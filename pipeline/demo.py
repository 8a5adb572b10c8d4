"""`python -m pipeline.demo` (what `make demo` runs): the bundled sample corpus from posts to a trained model and
tagged new posts, with a short summary on the terminal and everything else in one log file.

Steps, each the command a user would type (the log shows each one as it starts):

    corpus    python data/make_sample_corpus.py --out build/sample-src
    pipeline  luigi --module pipeline.tasks BuildDataset --source archive --input build/sample-src
                --output build/sample --local-scheduler --workers 2      (with LUIGI_CONFIG_PATH=demo.cfg)
    train     cmkp-train --data build/sample --config gen-cls-m3h-att-learned --out build/sample-run --epochs N ...
    tag       cmkp-tag --model build/sample-run --input build/sample-src/new-posts/posts.jsonl
                --out build/sample-run/new-posts-tags.jsonl --top 3

The new posts are the sample generator's, never in the archive the model was trained on. The pipeline runs
in this process (Luigi forks a process per task), so that a handler can time every task in
wall and CPU seconds; the other steps are subprocesses. The demo's sizes (images, proposals, boxes, the
attribute predictor) live in demo.cfg, the training's below.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import shutil
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO_CONFIG = ROOT / "demo.cfg"
LOG_FORMAT = "%(asctime)s %(name)s[%(process)d] %(levelname)s: %(message)s"
LOG_TAIL_LINES = 40          # shown on the terminal when a step fails


@dataclass(frozen=True)
class DemoConfig:
    out: Path = Path("build")
    workers: int = 2             # Luigi workers (processes running tasks at once)
    config: str = "gen-cls-m3h-att-learned"   # the default configuration (model.config.DEFAULT_CONFIG)
    epochs: int = 4              # few: the memory ranking scores well from the first epoch
    seed: int = 1
    top: int = 3                 # keyphrases shown per tagged new post

    @property
    def corpus(self) -> Path:
        return self.out / "sample-src"

    @property
    def dataset(self) -> Path:
        return self.out / "sample"

    @property
    def run(self) -> Path:
        return self.out / "sample-run"

    @property
    def new_posts(self) -> Path:
        return self.corpus / "new-posts" / "posts.jsonl"

    @property
    def tags(self) -> Path:
        return self.run / "new-posts-tags.jsonl"

    @property
    def timings(self) -> Path:
        return self.out / "demo-timings.jsonl"


def console_script(name: str) -> str:
    """A console script of this installation: beside the running Python (a virtual environment's bin/), else on
    PATH."""
    found = shutil.which(name, path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    if found is None:
        raise FileNotFoundError(f"{name} is not installed beside {sys.executable} nor on PATH (make install)")
    return found


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its children that have been waited for."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def record(path: Path, entry: dict) -> None:
    """Append one timing line; O_APPEND keeps the lines of concurrent task processes whole."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(entry, sort_keys=True) + "\n").encode())
    finally:
        os.close(fd)


def time_luigi_tasks(path: Path) -> None:
    """Record every Luigi task's wall and CPU seconds in `path` (the handlers run in each task's process)."""
    import luigi

    @luigi.Task.event_handler(luigi.Event.START)
    def started(task):
        task.demo_clock = (time.perf_counter(), cpu_seconds())

    @luigi.Task.event_handler(luigi.Event.PROCESSING_TIME)
    def finished(task, _seconds):
        wall, cpu = task.demo_clock
        record(path, {"step": "pipeline", "task": task.task_family, "split": getattr(task, "split", ""),
                      "wall_s": time.perf_counter() - wall, "cpu_s": cpu_seconds() - cpu})


class StepFailed(RuntimeError):
    """A step's command failed (its output is in the log)."""

    def __str__(self):
        return f"step {self.args[0]} failed"


class Demo:
    def __init__(self, config: DemoConfig):
        self.config = config

    def step(self, name: str, command: list[str], run) -> None:
        """Run one step, log its command, record its wall and CPU seconds."""
        print(f"\n==== {name}: {shlex.join(command)}", flush=True)
        wall, cpu = time.perf_counter(), cpu_seconds()
        ok = run()
        record(self.config.timings, {"step": name, "wall_s": time.perf_counter() - wall,
                                     "cpu_s": cpu_seconds() - cpu})
        if not ok:
            raise StepFailed(name)

    def subprocess_step(self, name: str, command: list[str]) -> None:
        self.step(name, command, lambda: subprocess.run(command).returncode == 0)

    def run(self) -> None:
        c = self.config
        python = sys.executable
        c.out.mkdir(parents=True, exist_ok=True)
        c.timings.unlink(missing_ok=True)
        self.subprocess_step("corpus", [python, str(ROOT / "data" / "make_sample_corpus.py"), "--out", str(c.corpus)])
        self.step("pipeline", ["env", f"LUIGI_CONFIG_PATH={DEMO_CONFIG.relative_to(ROOT)}", "luigi",
                               *self.pipeline_args()], self.pipeline)
        threads = str(os.cpu_count() or 1)
        self.subprocess_step("train", [
            console_script("cmkp-train"), "--data", str(c.dataset), "--config", c.config, "--out", str(c.run),
            "--epochs", str(c.epochs), "--seed", str(c.seed), "--device", "auto", "--allow-random-features",
            "--quiet", "--threads", threads])
        self.subprocess_step("tag", [
            console_script("cmkp-tag"), "--model", str(c.run), "--input", str(c.new_posts), "--out", str(c.tags),
            "--top", str(c.top), "--threads", threads])

    def pipeline_args(self) -> list[str]:
        c = self.config
        return ["--module", "pipeline.tasks", "BuildDataset", "--source", "archive", "--input", str(c.corpus),
                "--output", str(c.dataset), "--local-scheduler", "--workers", str(c.workers)]

    def pipeline(self) -> bool:
        import luigi.configuration
        import luigi.interface

        luigi.configuration.add_config_path(str(DEMO_CONFIG))
        # One torch thread per worker: the workers share the cores (torch is imported inside each task).
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // self.config.workers))
        time_luigi_tasks(self.config.timings)
        result = luigi.interface.run(self.pipeline_args(), detailed_summary=True)   # logs its own summary
        return result.scheduling_succeeded and result.status.name in ("SUCCESS", "SUCCESS_WITH_RETRY")


def redirect_output(log_path: Path):
    """Send this process's stdout and stderr (file descriptors 1 and 2, so also C libraries' and children's
    output) to `log_path`; returns a file object writing to the original stdout."""
    import logging

    log_path.parent.mkdir(parents=True, exist_ok=True)
    terminal = os.fdopen(os.dup(1), "w", buffering=1)
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, stream=sys.stderr, force=True)
    return terminal


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DemoConfig.out, help="directory for everything the demo writes")
    parser.add_argument("--log", type=Path, default=None, help="the full log (default: OUT/demo.log)")
    parser.add_argument("--workers", type=int, default=DemoConfig.workers)
    parser.add_argument("--epochs", type=int, default=DemoConfig.epochs)
    args = parser.parse_args(argv)
    config = DemoConfig(out=args.out, workers=args.workers, epochs=args.epochs)
    log_path = args.log or config.out / "demo.log"
    terminal = redirect_output(log_path)
    terminal.write(f"make demo: the bundled sample corpus end to end; full log in {log_path}\n")
    start = time.perf_counter()
    try:
        Demo(config).run()
    except Exception as error:             # a failed step, or one that could not start: both end in the log
        if not isinstance(error, StepFailed):
            traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        terminal.write(f"make demo FAILED ({error}); the last lines of {log_path}:\n{log_tail(log_path)}\n")
        return 1
    from pipeline.summary import demo_summary

    terminal.write(demo_summary(config, log_path, time.perf_counter() - start) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
