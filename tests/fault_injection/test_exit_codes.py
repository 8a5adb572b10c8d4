"""Every documented `luigi` command exits non-zero when a task fails, an input is missing, or a dependency
could not run (luigi.cfg's [retcode] section), and 0 on a good build. Run as a user runs them: a subprocess, in
a working directory of its own away from the repository (Luigi reads only that directory's luigi.cfg; the
project's reaches it through the import of the task module)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TASK_FAILED, MISSING_DATA, SCHEDULING_ERROR = 30, 20, 35


def luigi(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(Path(__file__).parent)])}
    env.pop("LUIGI_CONFIG_PATH", None)
    return subprocess.run([sys.executable, "-m", "luigi", *args, "--local-scheduler"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=100)


@pytest.fixture
def elsewhere(tmp_path) -> Path:
    """A working directory without a luigi.cfg, outside the repository."""
    (tmp_path / "cwd").mkdir()
    return tmp_path / "cwd"


def tiny_release(directory: Path) -> Path:
    directory.mkdir()
    (directory / "valid_src.txt").write_text("".join(f"post number {i} words<sep>kp {i % 2}<sep>http://x/{i}.jpg\n"
                                                     for i in range(6)))
    return directory


def test_a_good_build_exits_0(tmp_path, elsewhere):
    done = luigi("--module", "pipeline.tasks", "BuildDataset", "--source", "cmkp",
                 "--input", str(tiny_release(tmp_path / "release")), "--output", str(tmp_path / "out"), cwd=elsewhere)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "out" / "manifest.json").is_file()


def test_a_failed_task_exits_non_zero(tmp_path, elsewhere):
    (tmp_path / "archive").mkdir()  # no *.jsonl: CrawlTweets fails, and every task after it cannot run
    done = luigi("--module", "pipeline.tasks", "BuildDataset", "--source", "archive",
                 "--input", str(tmp_path / "archive"), "--output", str(tmp_path / "out"), cwd=elsewhere)
    assert done.returncode == TASK_FAILED, done.stderr[-2000:]
    assert "holds no *.jsonl" in done.stderr
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_a_missing_input_exits_non_zero(tmp_path, elsewhere):
    done = luigi("--module", "pipeline.tasks", "BuildDataset", "--source", "cmkp",
                 "--input", str(tmp_path / "no-such-release"), "--output", str(tmp_path / "out"), cwd=elsewhere)
    assert done.returncode == TASK_FAILED and "no CMKP release file" in done.stderr


def test_a_workflow_whose_dataset_is_missing_exits_non_zero(tmp_path, elsewhere):
    # The suite's dependency (a dataset built beforehand) does not exist, so nothing can run.
    done = luigi("--module", "workflows.experiments", "SeedSuite", "--shards-dir", str(tmp_path / "none"),
                 "--work-dir", str(tmp_path / "work"), "--seeds", "1",
                 cwd=elsewhere)
    assert done.returncode == MISSING_DATA, done.stderr[-2000:]


def test_a_dependency_that_cannot_be_scheduled_exits_non_zero(elsewhere):
    for task in ("RequiresRaises", "DependsOnAFailure"):
        done = luigi("--module", "failing_tasks", task, cwd=elsewhere)
        assert done.returncode == SCHEDULING_ERROR, (task, done.stderr[-2000:])


def test_tagging_with_a_missing_model_or_input_exits_non_zero(tmp_path, elsewhere):
    (tmp_path / "posts.jsonl").write_text('{"id": "1", "text": "a post to tag"}\n')
    for model, posts in ((tmp_path / "no-run", tmp_path / "posts.jsonl"), (tmp_path, tmp_path / "none.jsonl")):
        done = luigi("--module", "pipeline.tasks", "TagPosts", "--model", str(model), "--source", "posts",
                     "--input", str(posts), "--output", str(tmp_path / "tags"), cwd=elsewhere)
        assert done.returncode == TASK_FAILED, done.stderr[-2000:]
        assert not (tmp_path / "tags" / "tags.jsonl").exists()


def test_the_working_directorys_luigi_cfg_still_overrides_the_projects(tmp_path, elsewhere):
    (elsewhere / "luigi.cfg").write_text("[retcode]\ntask_failed = 3\n")
    (tmp_path / "archive").mkdir()
    done = luigi("--module", "pipeline.tasks", "BuildDataset", "--source", "archive",
                 "--input", str(tmp_path / "archive"), "--output", str(tmp_path / "out"), cwd=elsewhere)
    assert done.returncode == 3, done.stderr[-2000:]
    done = luigi("--module", "pipeline.tasks", "BuildDataset", "--source", "archive", "--retcode-task-failed", "4",
                 "--input", str(tmp_path / "archive"), "--output", str(tmp_path / "out"), cwd=elsewhere)
    assert done.returncode == 4, done.stderr[-2000:]  # and the command line overrides both
