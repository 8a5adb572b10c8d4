"""The pipeline's entry module: `luigi --module pipeline.tasks BuildDataset --source S --input I --output OUT`.

    BuildDataset -> SplitManifest(split) -> AssembleShard(split, i) -> TextShard(split, i)   (pipeline.text_tasks)
                                                                    -> one work shard per feature group
                 -> Vocabulary, Report, SplitPosts (and through it each source's stages: text_tasks.SOURCE_GRAPHS)

Feature groups plug in through `FEATURE_TASKS`: a group name mapped to a `ShardTask` class whose output is
`OUT/work/<group>/{split}/shard-NNNNN.h5`, written with `pipeline.shards.write_feature_shard` from the text
shard of the same split and index. `AssembleShard` joins the text shard and its groups' work shards into the
final `OUT/{split}/shard-NNNNN.h5`. Groups the records carry themselves (a CMKP release's `ocr` and
`attributes`) take the place of computed ones (`ReleaseFeatureShard`). Which groups a split's shards hold is
known once the split is planned, so `SplitManifest` asks for its shards as dynamic dependencies.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import luigi

from pipeline import shards
from durable.atomic import remove_stale_temporaries
from pipeline.targets import DurableTarget
from durable.faults import kill_point
from pipeline.manifests import dataset_manifest, split_manifest
from pipeline.report import check_counts, iter_rejects, load_counts
from pipeline.sources import SOURCES
from pipeline.text_tasks import (  # noqa: F401  (re-exported: luigi --module pipeline.tasks finds every task)
    SOURCE_GRAPHS, CrawlTweets, DatasetTask, DedupeImages, GuardedTask, FetchImages, FilterHashtags, FilterPosts,
    ReleaseFeatureShard, ReleaseImages, ShardTask, SourceGraph, SplitPosts, StageTask, TextShard, TokenizePosts,
    chain_parameters, read_jsonl, read_plan, shard_name,
)
from pipeline.embedding_tasks import EmbedPosts
from pipeline.image_tasks import (  # noqa: F401  (re-exported as above)
    IMAGE_FEATURE_TASKS, ExtractBUTD, ExtractVGG, OCRVocabulary, PredictAttributes, RunOCR,
    TrainAttributePredictor,
)
from pipeline.tag_tasks import (  # noqa: F401  (re-exported as above)
    CheckModel, TagCrawl, TagFilter, TagJoin, TagPlan, TagPosts, TagShard,
)

# Feature groups computed from a post's text alone.
TEXT_GROUPS = {"text_embedding"}
# Feature group -> task class (a ShardTask) that computes its work shard.
FEATURE_TASKS: dict[str, type[ShardTask]] = {**IMAGE_FEATURE_TASKS, "text_embedding": EmbedPosts}
ALL_FEATURES = ("ocr", "attributes", "vgg", "butd")


def check_feature_groups(groups) -> None:
    unknown = set(groups) - set(shards.FEATURE_COLUMNS)
    if unknown:
        raise ValueError(f"unknown feature groups {sorted(unknown)}; known: {list(shards.FEATURE_COLUMNS)}")


def shard_feature_groups(plan: dict, split: str, requested) -> tuple[list[str], list[str]]:
    """(the groups a split's final shards hold, in format order; those of them its records carry).

    Image groups are computed only where there are images to compute them from: a dataset none of whose posts
    has an image (a CMKP release without `images/`) holds the groups its records carry and the requested groups
    computed from text alone (the model then runs with the vision modality absent).
    """
    carried = plan["splits"][split].get("carried_features", [])
    computed = set(requested) if plan.get("with_image", 1) else set(requested) & TEXT_GROUPS
    groups = set(carried) | computed
    check_feature_groups(groups)
    return [g for g in shards.FEATURE_COLUMNS if g in groups], [g for g in shards.FEATURE_COLUMNS if g in carried]


def feature_task(group: str, dataset: dict, split: str, shard_index: int, features, carried) -> ShardTask:
    """The task writing `group`'s work shard for one shard whose final file holds `features`, of which `carried`
    come from the records. A feature task that reads other groups' work shards names them in `reads_groups` and
    is told the shard's groups (`shard_features`, `shard_carried`) to find them."""
    where = {**dataset, "split": split, "shard_index": shard_index}
    if group in carried:
        return ReleaseFeatureShard(**where, group=group)
    if group not in FEATURE_TASKS:
        raise ValueError(f"no task computes feature group {group!r} (registered: {sorted(FEATURE_TASKS)})")
    task_class = FEATURE_TASKS[group]
    if getattr(task_class, "reads_groups", ()):
        where.update(shard_features=list(features), shard_carried=list(carried))
    return task_class(**where)


class AssembleShard(ShardTask):
    """A final shard `OUT/{split}/shard-NNNNN.h5`: the text shard plus each feature group's work shard."""

    features = luigi.ListParameter(default=[], description="the groups the shard holds")
    carried = luigi.ListParameter(default=[], description="those of them the records carry")

    def requires(self):
        deps = {"text": TextShard(**self.dataset(), split=self.split, shard_index=self.shard_index)}
        for group in self.features:
            deps[group] = feature_task(group, self.dataset(), self.split, self.shard_index, self.features, self.carried)
        return deps

    def output(self):
        return self.target(self.split, shard_name(self.shard_index))

    def run(self):
        inputs = self.input()
        columns = shards.read_shard(inputs["text"].path, list(shards.TEXT_COLUMNS))
        attrs = {"split": self.split, "shard_index": self.shard_index, "source": self.source,
                 "parameters": chain_parameters(self), "random_weights": False}
        groups = [g for g in inputs if g != "text"]
        for done, group in enumerate(groups):
            path = inputs[group].path
            part = shards.read_shard(path)
            if part.pop("post_id").tolist() != columns["post_id"].tolist():
                raise RuntimeError(f"{path} is not aligned with its text shard {inputs['text'].path}")
            columns.update(part)
            group_attrs = shards.read_attrs(path)
            group_attrs.pop("feature_group", None)
            group_random = bool(group_attrs.pop("random_weights", False))    # popped: update() must not overwrite
            attrs["random_weights"] = attrs["random_weights"] or group_random
            attrs.update(group_attrs)
            self.set_progress_percentage(int(100 * (done + 1) / (len(groups) + 1)))
        with self.output().temporary_path() as tmp:
            shards.write_shard(tmp, columns, attrs)
        self.set_progress_percentage(100)


class SplitManifest(DatasetTask):
    """`OUT/{split}/manifest.json`: counts and the shard list (sha256, num_samples) of one split."""

    split = luigi.ChoiceParameter(choices=("train", "valid", "test"))
    features = luigi.ListParameter(default=[], description="feature groups requested for the dataset")

    def requires(self):
        return SplitPosts(**self.dataset())

    def output(self):
        return self.target(self.split, "manifest.json")

    def run(self):
        plan = read_plan(self.input().path)
        n_shards = plan["splits"][self.split]["shards"]
        groups, carried = shard_feature_groups(plan, self.split, self.features)
        # Dynamic dependencies: the number of shards and the groups they hold are known once SplitPosts has run.
        targets = yield [AssembleShard(**self.dataset(), split=self.split, shard_index=i, features=groups,
                                       carried=carried) for i in range(n_shards)]
        manifest = split_manifest(self.split, self.source, [Path(t.path) for t in targets],
                                  lambda done, total: self.set_progress_percentage(int(100 * done / max(total, 1))))
        with self.output().temporary_path() as tmp:
            Path(tmp).write_text(json.dumps(manifest, indent=1) + "\n")


class Vocabulary(DatasetTask):
    """`OUT/vocab.json`: word counts of the train split (post tokens, keyphrase words, OCR tokens), each by
    descending count with ties in first-seen order (the order the authors' vocabulary uses)."""

    def requires(self):
        return SplitPosts(**self.dataset())

    def output(self):
        return self.target("vocab.json")

    def run(self):
        tokens, keyphrase_words, ocr_tokens = Counter(), Counter(), Counter()
        train = Path(self.input().path, "train.jsonl")
        n = 0
        if train.exists():
            for record in read_jsonl(train):
                n += 1
                tokens.update(record["tokens"].split())
                for keyphrase in record["keyphrases"]:
                    keyphrase_words.update(keyphrase.split())
                ocr_tokens.update(record.get("ocr_tokens", "").split())
        vocab = {"split": "train", "posts": n, "tokens": dict(tokens.most_common()),
                 "keyphrase_words": dict(keyphrase_words.most_common()), "ocr_tokens": dict(ocr_tokens.most_common())}
        with self.output().temporary_path() as tmp:
            Path(tmp).write_text(json.dumps(vocab, ensure_ascii=False, indent=0) + "\n")


class Report(DatasetTask):
    """`OUT/report.json` (counts per stage, reconciled) and `OUT/rejects.jsonl` (every rejection, all stages).

    Its stages are those of its source's graph, in pipeline order, each a requirement."""

    def requires(self):
        return {"stages": {cls.stage: cls(**self.dataset()) for cls in SOURCE_GRAPHS[self.source].stages},
                "split": SplitPosts(**self.dataset())}

    def output(self):
        return self.target("report.json")

    def run(self):
        stages = {}
        remove_stale_temporaries(self.path("rejects.jsonl"))  # a second file of this task's, under its lock
        with DurableTarget(str(self.path("rejects.jsonl"))).temporary_path() as tmp, \
                open(tmp, "w", encoding="utf-8") as out:
            for stage, target in self.input()["stages"].items():
                counts = load_counts(target.path)
                check_counts(stage, counts)
                stages[stage] = counts
                for reject in iter_rejects(target.path):
                    out.write(json.dumps(reject, ensure_ascii=False) + "\n")
        plan = read_plan(self.input()["split"].path)
        report = {"source": self.source, "stages": stages,
                  "splits": {s: v["posts"] for s, v in plan["splits"].items()}}
        with self.output().temporary_path() as tmp:
            Path(tmp).write_text(json.dumps(report, indent=1) + "\n")


class DatasetDirectoryParameter(luigi.Parameter):
    """BuildDataset's documented `--output DIR`, whose name shadows `luigi.Task.output()` on the instance. The
    value is kept as the directory (a str) that can also be called, returning the task's one output
    `DIR/manifest.json`, so that Luigi's completeness check and a `yield BuildDataset(...)` from another task
    work as for any task."""

    class Directory(str):
        def __call__(self) -> DurableTarget:
            return DurableTarget(str(Path(self, "manifest.json")))

    def normalize(self, x):
        return self.Directory(x)


class BuildDataset(GuardedTask):
    """The whole dataset in `--output`: final shards and manifests per split, vocab, rejects and report.

    `OUT/manifest.json` is written last: it exists only when everything else is complete.
    """

    source = luigi.ChoiceParameter(choices=SOURCES, description="archive, api, ids, cmkp or posts")
    input = luigi.Parameter(description="archive directory, id file, query or CMKP release directory")
    output = DatasetDirectoryParameter(description="the dataset directory")
    features = luigi.ListParameter(default=ALL_FEATURES, description="feature groups to compute, e.g. [\"ocr\", \"vgg\"]")

    def dataset(self) -> dict:
        return {"source": self.source, "input_path": self.input, "dataset_dir": str(self.output)}

    def dataset_root(self) -> str:
        return str(self.output)

    def inputs(self) -> dict:
        """`Task.input()`, which the `--input` parameter shadows on the instance (as `--output` does `output()`,
        see DatasetDirectoryParameter)."""
        return luigi.Task.input(self)

    def requires(self):
        check_feature_groups(self.features)
        return {"split": SplitPosts(**self.dataset()), "vocab": Vocabulary(**self.dataset()),
                "report": Report(**self.dataset())}

    def run(self):
        inputs = self.inputs()
        plan = read_plan(inputs["split"].path)
        splits = list(plan["splits"])
        manifests = yield {s: SplitManifest(**self.dataset(), split=s, features=self.features) for s in splits}
        kill_point("dataset_manifest")
        manifest = dataset_manifest(Path(self.output), {s: Path(manifests[s].path) for s in splits},
                                    ["vocab.json", "report.json", "rejects.jsonl"], source=self.source,
                                    input=self.input, features=list(self.features), parameters=plan["parameters"])
        with self.output().temporary_path() as tmp:
            Path(tmp).write_text(json.dumps(manifest, indent=1) + "\n")
