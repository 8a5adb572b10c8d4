"""Tagging new posts with a trained run: `luigi --module pipeline.tasks TagPosts --model RUN_DIR --source S
--input I --output OUT`.

    TagCrawl [-> TagFilter] -> TagPlan -> TagShard(i) ... -> TagJoin -> TagPosts
    TagCrawl -> CheckModel -------------------------------------------/

`TagCrawl` is the pipeline's crawl stage for any source (`OUT/work/crawl/`); before it reads anything it verifies
the run's featurisation and loads the tagger (a run that cannot featurise new posts as it was trained fails
there, naming what differs); `CheckModel` records what the tagger computes for the report. With
`--filters train` the training's text filters follow (`TagFilter`, `OUT/work/filter/`), and each shard also rejects what training rejected (too few tokens, no hashtag, a rejected
image). No filter needing labels runs otherwise: every post read is tagged, duplicates included. `TagPlan` cuts the
posts into shards of `shard_size`; each `TagShard` (the unit of work, `OUT/work/tag/shard-NNNNN.jsonl`) reads
its posts' images once and tags them with `model.tagging.Tagger` (batched, OCR in a process pool). `TagJoin`
writes `OUT/tags.jsonl`, one line per record read; `TagPosts` writes `OUT/report.json` last (read = tagged +
rejected, by reason; modalities; the tagger's weights and notes; scores where the posts carry hashtags).
"""
from __future__ import annotations

import itertools
import json
from collections import Counter
from pathlib import Path

import luigi

from pipeline.targets import DurableTarget
from pipeline.report import check_counts, iter_rejects, load_counts
from pipeline.sources import SOURCES
from pipeline.text_tasks import (PROGRESS_SECONDS, CrawlTweets, DatasetTask, FilterPosts, StageTask, read_jsonl,
                                 write_jsonl)

FILTERS = ("none", "train")
# The located files are checked against the run's record: where they lie does not change the tags.
LOCATE_HELP = ('what the run points to outside itself, placed where its recorded path is gone, each checked by '
               'sha256: \'{"attributes": "PREDICTOR.pt", "text_embedding": "ENCODER_DIR", "ocr": "TESSDATA_DIR", '
               '"vgg": "VGG16.pth", "butd": "DETECTOR.pth", "segmenter:NAME": "FILE"}\'')
_taggers: dict[tuple, object] = {}      # one loaded tagger per run and settings in this process


def run_dirs(model: str) -> list[str]:
    """`--model RUN`, or `--model '["RUN_A", "RUN_B"]'`: an ensemble of seeds of one configuration."""
    runs = json.loads(model) if model.lstrip().startswith("[") else [model]
    if not runs or not all(isinstance(r, str) for r in runs):
        raise ValueError(f"--model {model!r}: a run directory, or a JSON list of run directories")
    return runs


def shared_tagger(model: str, device: str, batch_size: int, ocr_workers: int, locate: dict):
    """The tagger of a run (or an ensemble of runs), loaded once per worker process (every shard shares it)."""
    from model.tagging import Tagger

    runs = run_dirs(model)
    locate = {str(k): str(v) for k, v in locate.items()}
    key = (tuple(str(Path(r).resolve()) for r in runs), device, batch_size, ocr_workers, tuple(sorted(locate.items())))
    if key not in _taggers:
        _taggers[key] = Tagger.load(runs, device=device, batch_size=batch_size, ocr_workers=ocr_workers,
                                    locate=locate)
    return _taggers[key]


class TagParameters(luigi.Task):
    """Parameters of every tagging task besides the source's: the run and how it is applied."""

    model = luigi.Parameter(description="the run directory (cmkp-train --out), or a JSON list of runs of one "
                                        "configuration (an ensemble: their ranking scores averaged)")
    filters = luigi.ChoiceParameter(default="none", choices=FILTERS,
                                    description="none: tag every post; train: apply the training's filters")
    device = luigi.Parameter(default="auto", significant=False)
    batch_size = luigi.IntParameter(default=32, significant=False, description="posts per batch on the device")
    ocr_workers = luigi.IntParameter(default=0, significant=False, description="OCR processes (0: all cores)")
    locate = luigi.DictParameter(default={}, significant=False, description=LOCATE_HELP)

    def tag_params(self) -> dict:
        return {**self.dataset(), "model": self.model, "filters": self.filters, "device": self.device,
                "batch_size": self.batch_size, "ocr_workers": self.ocr_workers, "locate": self.locate}

    def tagger(self):
        return shared_tagger(self.model, self.device, self.batch_size, self.ocr_workers, self.locate)


class TagTask(TagParameters, DatasetTask):
    """A tagging task writing under the output directory (`dataset_dir`)."""


class CheckModel(TagTask):
    """`OUT/work/tag/model.json`: what the checked, loaded tagger computes and from which weights."""

    def requires(self):
        return TagCrawl(**self.tag_params())

    def output(self):
        return self.target("work", "tag", "model.json")

    def run(self):
        description = self.tagger().describe()
        self.output().makedirs()
        with self.output().temporary_path() as tmp:
            Path(tmp).write_text(json.dumps(description, indent=1) + "\n")


class TagCrawl(TagParameters, CrawlTweets):
    """The crawl stage of the source (`OUT/work/crawl/`), run only once the run's featurisation is checked and
    its tagger loaded (a run that cannot featurise new posts as it was trained fails here, before reading
    anything). Its API settings are CrawlTweets' (luigi.cfg)."""

    api_base_url = luigi.Parameter(default="https://api.twitter.com", significant=False,
                                   config_path={"section": "CrawlTweets", "name": "api_base_url"})
    api_endpoint = luigi.ChoiceParameter(default="recent", choices=("recent", "all"),
                                         config_path={"section": "CrawlTweets", "name": "api_endpoint"})
    max_pages = luigi.IntParameter(default=0, config_path={"section": "CrawlTweets", "name": "max_pages"})
    token_env = luigi.Parameter(default="TWITTER_BEARER_TOKEN",
                                config_path={"section": "CrawlTweets", "name": "token_env"})

    def requires(self):
        return []                    # the first stage

    def run(self):
        self.set_status_message(f"checking and loading {self.model}")
        self.tagger()
        super().run()


class TagFilter(TagParameters, FilterPosts):
    """`--filters train`: the training's text-level filters (FilterPosts' settings in luigi.cfg)."""

    max_hashtags = luigi.IntParameter(default=5, config_path={"section": "FilterPosts", "name": "max_hashtags"})
    language = luigi.Parameter(default="en", config_path={"section": "FilterPosts", "name": "language"})

    def requires(self):
        return TagCrawl(**self.tag_params())


def upstream_stage(task: TagTask) -> StageTask:
    """The last stage before tagging: the crawl, or the training's filters after it."""
    upstream = TagFilter if task.filters == "train" else TagCrawl
    return upstream(**task.tag_params())


class TagPlan(TagTask):
    """`OUT/work/tag/plan.json`: the posts to tag (the upstream stage's posts.jsonl) cut into shards."""

    shard_size = luigi.IntParameter(default=500, description="posts per tagging shard")

    def requires(self):
        return upstream_stage(self)

    def output(self):
        return self.target("work", "tag", "plan.json")

    def run(self):
        if self.shard_size < 1:
            raise ValueError(f"shard_size must be positive, got {self.shard_size}")
        posts = load_counts(self.input().path)["kept"]
        plan = {"posts": posts, "shard_size": self.shard_size, "shards": -(-posts // self.shard_size),
                "records": str(Path(self.input().path, "posts.jsonl"))}
        with self.output().temporary_path() as tmp:
            Path(tmp).write_text(json.dumps(plan, indent=1) + "\n")


class TagShard(TagTask):
    """`OUT/work/tag/shard-NNNNN.jsonl`: one line per post of the shard, tagged or rejected."""

    shard_index = luigi.IntParameter()
    shard_size = luigi.IntParameter(default=500)
    top = luigi.IntParameter(default=10, description="keyphrases per post")

    def requires(self):
        return TagPlan(**self.tag_params(), shard_size=self.shard_size)

    def output(self):
        return self.target("work", "tag", f"shard-{self.shard_index:05d}.jsonl")

    def records(self) -> list[dict]:
        plan = json.loads(Path(self.input().path).read_text())
        size = plan["shard_size"]
        with open(plan["records"], encoding="utf-8") as f:
            return [json.loads(line) for line in itertools.islice(f, self.shard_index * size,
                                                                  (self.shard_index + 1) * size)]

    def post(self, record: dict, release_images: dict) -> dict:
        """A crawl record as the tagger's input: raw text with its entities and one photo, or (a CMKP release)
        its tokens, keyphrases and carried features."""
        if self.source == "cmkp":
            post = {k: record[k] for k in ("id", "tokens", "keyphrases") if k in record}
            post.update({k: record[k] for k in ("ocr_tokens", "attributes") if record.get(k)})
            name = record.get("image_url", "").rsplit("/", 1)[-1]
            if name in release_images:
                post["image"] = str(release_images[name])
            return post
        from pipeline.clean import photos

        post = {"id": record["id"], "text": record["text"], "entities": record.get("entities")}
        found = photos(record)
        if found:
            post["image"] = found[0].get("file") or found[0].get("url") or ""
        return post

    def run(self):
        records = self.records()
        tagger = self.tagger()
        release_images = {}
        if self.source == "cmkp":
            from pipeline.sources.cmkp import release_image_files
            release_images = release_image_files(self.input_path)
        text = tagger.featurisation.record["text"]
        prepared, lines = [], []
        for i, record in enumerate(records):
            p = tagger.prepare(self.post(record, release_images), i)
            reject = None
            if self.filters == "train":
                if len(p.tokens) < text["min_tokens"]:
                    reject = ("too_few_tokens", f"{len(p.tokens)} < {text['min_tokens']}: {' '.join(p.tokens)}")
                elif not p.gold:
                    reject = ("no_hashtag", "no hashtag left after segmentation")
                elif p.image_rejected:
                    reject = p.image_rejected
            lines.append({"id": p.id, "rejected": reject[0], "detail": reject[1], "stage": "tag"} if reject else None)
            if not reject:
                prepared.append(p)
            self._progress(i + 1, 2 * len(records), "prepared")
        results = tagger.tag_prepared(prepared, self.top,
                                      progress=lambda done: self._progress(len(records) + done, 2 * len(records),
                                                                           "tagged"))
        tagged = iter(results)
        lines = [line if line is not None else next(tagged) for line in lines]
        with self.output().temporary_path() as tmp:
            write_jsonl(tmp, lines)
        self.set_progress_percentage(100)

    _last_report = 0.0

    def _progress(self, done: int, total: int, what: str) -> None:
        import time

        if time.monotonic() - self._last_report >= PROGRESS_SECONDS:
            self._last_report = time.monotonic()
            self.set_progress_percentage(int(100 * min(done, total) / max(total, 1)))
            self.set_status_message(f"tag shard {self.shard_index}: {what}, {min(done, total)} of {total} steps")


class TagJoin(TagTask):
    """`OUT/tags.jsonl`: every shard's lines in post order, then the records the crawl (and the training's
    filters) rejected, as `{"id", "rejected", "detail", "stage"}`."""

    shard_size = luigi.IntParameter(default=500)
    top = luigi.IntParameter(default=10)

    def requires(self):
        return TagPlan(**self.tag_params(), shard_size=self.shard_size)

    def output(self):
        return self.target("tags.jsonl")

    def stages(self) -> list[StageTask]:
        stages, task = [], upstream_stage(self)
        while isinstance(task, StageTask):
            stages.append(task)
            task = task.requires()
        return stages[::-1]

    def run(self):
        plan = json.loads(Path(self.input().path).read_text())
        shards = yield [TagShard(**self.tag_params(), shard_index=i, shard_size=self.shard_size, top=self.top)
                        for i in range(plan["shards"])]
        with self.output().temporary_path() as tmp, open(tmp, "w", encoding="utf-8") as out:
            for target in shards:
                with open(target.path, encoding="utf-8") as f:
                    out.writelines(f)
            for stage in self.stages():
                for reject in iter_rejects(stage.output().path):
                    out.write(json.dumps({"id": reject["id"], "rejected": reject["reason"],
                                          "detail": reject["detail"], "stage": reject["stage"]},
                                         ensure_ascii=False, sort_keys=True) + "\n")


class TagPosts(luigi.Task):
    """Tag every post of a source with a trained run: `OUT/tags.jsonl` and, last, `OUT/report.json`."""

    model = luigi.Parameter(description="the run directory (cmkp-train --out), or a JSON list of runs of one "
                                        "configuration (an ensemble: their ranking scores averaged)")
    source = luigi.ChoiceParameter(choices=SOURCES, description="archive, api, ids, cmkp or posts")
    input = luigi.Parameter(description="archive directory, id file, query, CMKP release or posts file")
    output = luigi.Parameter(description="the output directory")
    filters = luigi.ChoiceParameter(default="none", choices=FILTERS,
                                    description="none: tag every post; train: the training's filters first")
    top = luigi.IntParameter(default=10, description="keyphrases per post")
    shard_size = luigi.IntParameter(default=500, description="posts per tagging shard")
    device = luigi.Parameter(default="auto", significant=False)
    batch_size = luigi.IntParameter(default=32, significant=False)
    ocr_workers = luigi.IntParameter(default=0, significant=False)
    locate = luigi.DictParameter(default={}, significant=False, description=LOCATE_HELP)

    def tag_params(self) -> dict:
        return {"source": self.source, "input_path": self.input, "dataset_dir": self.output, "model": self.model,
                "filters": self.filters, "device": self.device, "batch_size": self.batch_size,
                "ocr_workers": self.ocr_workers, "locate": self.locate}

    def report_target(self) -> DurableTarget:
        return DurableTarget(str(Path(self.output, "report.json")))

    # `output` is the --output parameter here, so completeness is decided by the report directly.
    def complete(self):
        return self.report_target().exists()

    def requires(self):
        return {"tags": TagJoin(**self.tag_params(), shard_size=self.shard_size, top=self.top),
                "model": CheckModel(**self.tag_params())}

    def run(self):
        from model.tagging import score

        # `input` is the --input parameter here: the requirements' outputs are read through `requires()`.
        join, check = self.requires()["tags"], self.requires()["model"]
        stages = {}
        for stage in join.stages():
            counts = load_counts(stage.output().path)
            check_counts(stage.stage, counts)
            stages[stage.stage] = counts
        lines = list(read_jsonl(join.output().path))
        tagged = [line for line in lines if "keyphrases" in line]
        tag_rejects = Counter(line["rejected"] for line in lines if line.get("stage") == "tag")
        stages["tag"] = {"read": len(tagged) + sum(tag_rejects.values()), "kept": len(tagged),
                         "rejected": dict(sorted(tag_rejects.items()))}
        rejected = Counter(line["rejected"] for line in lines if "rejected" in line)
        read = stages["crawl"]["read"]
        report = {"model": self.model, "source": self.source, "input": self.input, "filters": self.filters,
                  "read": read, "tagged": len(tagged), "rejected": dict(sorted(rejected.items())),
                  "stages": stages,
                  "modalities": dict(sorted(Counter(m for line in tagged for m in line["modalities"]).items())),
                  "images_rejected": dict(sorted(Counter(line["image_rejected"]["reason"] for line in tagged
                                                         if "image_rejected" in line).items())),
                  "tagger": json.loads(Path(check.output().path).read_text())}
        if report["tagger"]["random_weights"]:
            report["random_weights"] = ("image features from seeded random weights, as the model was trained: "
                                        "they carry no image semantics")
        if read != len(tagged) + sum(rejected.values()) or len(lines) != read:
            raise AssertionError(f"tags.jsonl does not reconcile: read {read}, {len(lines)} lines, tagged "
                                 f"{len(tagged)}, rejected {dict(rejected)}")
        scores = score(tagged)
        if scores["posts"]:
            report["score"] = scores
        with self.report_target().temporary_path() as tmp:
            Path(tmp).write_text(json.dumps(report, indent=1) + "\n")
