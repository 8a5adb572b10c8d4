"""The task graph: one mapping per source, requires() without I/O, defaults independent of the working directory."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import luigi

from pipeline import tasks
from pipeline.sources import SOURCES
from pipeline.text_tasks import SOURCE_GRAPHS, CrawlTweets, ReleaseImages, SplitPosts, StageTask


def walk(task, seen=None):
    seen = {} if seen is None else seen
    seen[task.task_id] = task
    for dep in luigi.task.flatten(task.requires()):
        walk(dep, seen)
    return seen


def test_every_source_has_a_graph_ending_at_the_split():
    assert set(SOURCE_GRAPHS) == set(SOURCES)
    for source, graph in SOURCE_GRAPHS.items():
        assert graph.stages[0] is CrawlTweets and all(issubclass(s, StageTask) for s in graph.stages)
        split = SplitPosts(source=source, input_path="in", dataset_dir="out")
        chain, task = [], split.requires()
        while task:
            chain.append(type(task))
            task = task.requires()
        assert tuple(reversed(chain)) == graph.stages
    assert SOURCE_GRAPHS["cmkp"].stages == (CrawlTweets, ReleaseImages) and SOURCE_GRAPHS["cmkp"].keeps_splits
    assert len(SOURCE_GRAPHS["archive"].stages) == 6 and not SOURCE_GRAPHS["archive"].keeps_splits


def test_requires_reads_no_file(tmp_path, monkeypatch):
    """The whole static graph of every source is walked with no input and no dataset directory present."""
    monkeypatch.chdir(tmp_path)
    opened = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda *a, **k: opened.append(a[0]) or real_open(*a, **k))
    for source in SOURCES:
        build = tasks.BuildDataset(source=source, input=str(tmp_path / "missing"), output=str(tmp_path / "out"))
        graph = walk(build)
        report = next(t for t in graph.values() if isinstance(t, tasks.Report))
        assert list(report.requires()["stages"]) == [s.stage for s in SOURCE_GRAPHS[source].stages]
    assert opened == [] and os.listdir(tmp_path) == []


PARAMETERS = """
import json
from pipeline import tasks
from pipeline.text_tasks import chain_parameters
build = tasks.BuildDataset(source="archive", input="in", output="out")
shard = tasks.AssembleShard(source="archive", input_path="in", dataset_dir="out", split="train", shard_index=0,
                            features=list(build.features))
print(json.dumps([build.to_str_params(), chain_parameters(shard)], sort_keys=True))
"""


def test_parameters_are_the_same_from_any_working_directory(tmp_path):
    """From the repository (its luigi.cfg read) and from elsewhere, every task gets the same parameters."""
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    env.pop("LUIGI_CONFIG_PATH", None)
    runs = [subprocess.run([sys.executable, "-c", PARAMETERS], cwd=cwd, env=env, capture_output=True, text=True,
                           check=True).stdout for cwd in (repo, tmp_path)]
    assert runs[0] == runs[1]
    build, chain = json.loads(runs[0])
    assert json.loads(build["features"]) == list(tasks.ALL_FEATURES)
    assert {"FilterPosts", "FetchImages", "SplitPosts", "ExtractVGG", "RunOCR"} <= set(chain)


def test_build_dataset_output_is_its_manifest(tmp_path):
    build = tasks.BuildDataset(source="archive", input="in", output=str(tmp_path / "out"))
    assert build.output().path == str(tmp_path / "out" / "manifest.json") and not build.complete()
    assert build.to_str_params()["output"] == str(tmp_path / "out")
    assert type(build.dataset()["dataset_dir"]) is str
