"""The text half of the pipeline as Luigi tasks: posts in, text shards `OUT/work/text/{split}/shard-NNNNN.h5` out.

`SOURCE_GRAPHS` (at the end of this module) is the one place that says, per source, which tasks produce its
records and how they are split:

    cmkp (a release):           CrawlTweets -> ReleaseImages -> SplitPosts (the release's own splits)
    archive, api, ids, posts:   CrawlTweets -> FilterPosts -> FetchImages -> DedupeImages -> TokenizePosts
                                -> FilterHashtags -> SplitPosts (shuffled with a seed, cut 80/10/10)
    then, for every source:     SplitPosts -> TextShard(split, shard_index)

Each stage is one task whose `requires()` is the stage before it in its source's graph. Every output is written
to a temporary path, made durable and renamed (`pipeline.atomic`), so a file or directory that exists is
complete and a rerun after a failure or a kill redoes only what is missing. A stage directory
`OUT/work/<stage>/` holds `posts.jsonl` (the records kept, one JSON object per line), `rejects.jsonl` and
`counts.json` (see `pipeline.report`); the image stages also keep a journal beside it
(`OUT/work/<stage>-journal.jsonl`) from which a killed run resumes. `SplitPosts` writes
`OUT/work/split/{split}.jsonl` and `plan.json` (posts, shards and the feature groups the records carry, per
split); the shard tasks read their records from there.

A post record, as it reaches the text shards:
    id, split, text, tokens (str), keyphrases (list of str), hashtags (list of str), image_url, image_sha256,
    image_path, image_present (bool), image_size ([w, h]); CMKP records also carry ocr_raw, ocr_tokens, attributes.
"""
from __future__ import annotations

import functools
import hashlib
import inspect
import itertools
import json
import os
import random
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import luigi

from pipeline import shards
from durable.atomic import atomic_directory, remove_stale_temporaries
from pipeline.targets import DurableTarget
from pipeline.guard import check_identity, output_lock, record_identity
from pipeline.inputs import InputFiles
from pipeline.report import StageLog
from pipeline.shards import SPLITS
from pipeline.sources import SOURCES, archive, cmkp, posts

PROGRESS_SECONDS = 1.0  # at most one progress report per second (each is a call to the scheduler)


def write_jsonl(path: str | Path, records: Iterable[dict]) -> int:
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")
            n += 1
    return n


def read_jsonl(path: str | Path) -> Iterator[dict]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)


def shard_name(shard_index: int) -> str:
    return f"shard-{shard_index:05d}.h5"


# Where a dataset is written does not change its content: the same input must give byte-identical outputs
# wherever they are built, so these parameters are left out of provenance and identity.
LOCATION_PARAMETERS = ("dataset_dir", "output")


def chain_parameters(task: luigi.Task) -> dict:
    """Significant parameters of a task and of everything it requires, per task family (provenance), with the
    digests of inputs that a path does not identify (`GuardedTask.input_digests`)."""
    seen: dict[str, list[dict]] = {}

    def walk(t: luigi.Task) -> None:
        params = {k: v for k, v in t.to_str_params(only_significant=True).items() if k not in LOCATION_PARAMETERS}
        if isinstance(t, GuardedTask):
            params.update(t.input_digests())
        if params not in seen.setdefault(t.task_family, []):
            seen[t.task_family].append(params)
        for dep in luigi.task.flatten(t.requires()):
            walk(dep)

    walk(task)
    # One entry per task family; a list where it ran with several parameter sets (e.g. one per feature group).
    return {family: runs[0] if len(runs) == 1 else runs for family, runs in sorted(seen.items())}


class GuardedTask(luigi.Task):
    """A task whose outputs live in one dataset directory, guarded as `pipeline.guard` describes: its `run()`
    holds the lock of each of its outputs (and returns at once if another build completed them meanwhile),
    clears what killed writers of them left, and records their identity before writing them; `complete()`
    refuses an output recorded with another identity. Subclasses write `run()` as usual: it is wrapped here."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "run" in cls.__dict__:
            cls.run = _guarded(cls.__dict__["run"])

    def dataset_root(self) -> str:
        """The dataset directory whose locks and identity records guard this task's outputs."""
        raise TypeError(f"{type(self).__name__} must say which dataset directory it writes (dataset_root)")

    def input_digests(self) -> dict:
        """Digests of inputs that their path does not identify (none by default)."""
        return {}

    def identity(self) -> dict:
        return {"task": self.task_family, "parameters": chain_parameters(self)}

    def output_paths(self) -> list[str]:
        return [target.path for target in luigi.task.flatten(self.output())]

    def complete(self):
        paths = self.output_paths()
        if not paths or not all(os.path.exists(p) for p in paths):
            return False
        for path in paths:
            check_identity(self.dataset_root(), path, self.identity())
        return True


def _guarded(run):
    """`run` under the guard of `GuardedTask` (a generator `run`, one with dynamic dependencies, stays one)."""

    @contextmanager
    def guard(task: GuardedTask):
        if getattr(task, "_guarded", False):  # a subclass's run() calling super().run(): already guarded
            yield True
            return
        task._guarded = True
        try:
            with ExitStack() as locks:
                for path in task.output_paths():
                    locks.enter_context(output_lock(task.dataset_root(), path, task.set_status_message))
                if task.complete():  # another build wrote it while this one waited
                    yield False
                    return
                for path in task.output_paths():
                    remove_stale_temporaries(path)
                    record_identity(task.dataset_root(), path, task.identity())
                yield True
        finally:
            task._guarded = False

    if inspect.isgeneratorfunction(run):
        @functools.wraps(run)
        def guarded_generator(self):
            with guard(self) as needed:
                if needed:
                    yield from run(self)
        return guarded_generator

    @functools.wraps(run)
    def guarded(self):
        with guard(self) as needed:
            if needed:
                run(self)
    return guarded


class DatasetTask(GuardedTask):
    """Parameters every stage shares: where posts come from and which dataset directory they go to."""

    source = luigi.ChoiceParameter(choices=SOURCES, description="archive, api, ids, cmkp or posts")
    # Not `input`/`output`: those names are Luigi's methods (BuildDataset's --input/--output map onto these).
    input_path = luigi.Parameter(description="archive directory, id file, query or CMKP release directory")
    dataset_dir = luigi.Parameter(description="the dataset directory (BuildDataset's --output)")

    def dataset(self) -> dict:
        return {"source": self.source, "input_path": self.input_path, "dataset_dir": self.dataset_dir}

    def dataset_root(self) -> str:
        return self.dataset_dir

    def path(self, *parts: str) -> Path:
        return Path(self.dataset_dir, *parts)

    def target(self, *parts: str) -> DurableTarget:
        return DurableTarget(str(self.path(*parts)))


class StageTask(DatasetTask):
    """A stage that reads records and keeps or rejects each: output `OUT/work/<stage>/`.

    `run()` is the same for every stage: read the upstream stage's kept posts, `process` them, save what is
    kept with the stage's log into the atomic stage directory, report progress. A stage writes `process` only.
    """

    stage: str = ""
    unit: str = "posts"  # what the stage counts; "images" for a stage that passes every post on

    def requires(self):
        """The stage before this one in its source's graph (none for the first)."""
        stages = SOURCE_GRAPHS[self.source].stages
        if type(self) not in stages:
            raise ValueError(f"{self.task_family} is not a stage of source {self.source!r}")
        position = stages.index(type(self))
        return stages[position - 1](**self.dataset()) if position else []

    def output(self):
        return self.target("work", self.stage)

    def upstream_records(self) -> list[dict]:
        if not self.requires():
            return []
        return list(read_jsonl(Path(self.input().path) / "posts.jsonl"))

    def process(self, records: list[dict], log: StageLog) -> Iterable[dict]:
        """The records this stage keeps; every record read is kept or rejected (with its reason) into `log`."""
        raise TypeError(f"stage {type(self).__name__} must define process(records, log)")

    def run(self):
        log = StageLog(self.stage, unit=self.unit)
        records = self.upstream_records()
        with atomic_directory(self.output().path) as tmp:
            self.save(tmp, self.process(records, log), log)
        self.set_progress_percentage(100)

    def progress(self, records: list[dict]) -> Iterator[dict]:
        """`records`, reporting the share handed out so far as Luigi progress and status message."""
        last = time.monotonic()
        for i, record in enumerate(records):
            if time.monotonic() - last >= PROGRESS_SECONDS:
                last = time.monotonic()
                self.set_progress_percentage(int(100 * i / len(records)))
                self.set_status_message(f"{self.stage}: {i} of {len(records)} posts")
            yield record

    def save(self, directory: Path, records: Iterable[dict], log: StageLog) -> None:
        written = write_jsonl(directory / "posts.jsonl", records)
        # Nothing lost between stages: a stage of posts reads every post the stage before it kept and writes every
        # post it keeps; a stage of images (ReleaseImages) passes every post through.
        passed_in = None
        if self.requires():
            passed_in = json.loads((Path(self.input().path) / "counts.json").read_text())["kept"]
        expected = {"read": passed_in, "written": log.kept} if log.unit == "posts" else {"written": passed_in}
        found = {"read": log.read, "written": written}
        for what, n in expected.items():
            if n is not None and found[what] != n:
                raise AssertionError(f"stage {self.stage!r}: {found[what]} posts {what}, expected {n} "
                                     f"(read {log.read}, kept {log.kept}, stage before kept {passed_in})")
        log.save(directory)
        self.set_status_message(f"{self.stage}: read {log.read}, kept {log.kept}, rejected {dict(log.rejected)}")


class CrawlTweets(StageTask):
    """Import or crawl posts from the source (its graph's `read`) into `OUT/work/crawl/posts.jsonl`."""

    stage = "crawl"
    api_base_url = luigi.Parameter(default="https://api.twitter.com", significant=False,
                                   description="API v2 server (api and ids sources)")
    api_endpoint = luigi.ChoiceParameter(default="recent", choices=("recent", "all"),
                                         description="search/recent or search/all (full archive)")
    max_pages = luigi.IntParameter(default=0, description="stop the search after this many pages (0: no limit)")
    token_env = luigi.Parameter(default="TWITTER_BEARER_TOKEN", significant=False,
                                description="environment variable of the token")
    start_time = luigi.Parameter(default="", description="api source: the search's start_time (inclusive), "
                                 "a date or an ISO 8601 time with its zone; empty: the endpoint's earliest")
    end_time = luigi.Parameter(default="", description="api source: the search's end_time (exclusive); empty: now")

    def counted(self, records: Iterator[dict], log: StageLog) -> Iterator[dict]:
        """`records`, reporting the counts so far as status message (how many posts a source holds is not
        known in advance, so there is no percentage until the end)."""
        last = time.monotonic()
        for record in records:
            if time.monotonic() - last >= PROGRESS_SECONDS:
                last = time.monotonic()
                self.set_status_message(f"{self.stage}: read {log.read}, kept {log.kept}")
            yield record

    def process(self, records, log):
        return self.counted(SOURCE_GRAPHS[self.source].read(self, log), log)

    def input_files(self) -> InputFiles | None:
        """The files the source reads, fingerprinted once per process against the record this stage keeps of
        them (StaleOutputError if they changed); None for a query or an id file."""
        list_files = SOURCE_GRAPHS[self.source].input_files
        if list_files is None:
            return None
        if getattr(self, "_input_files", None) is None:
            self._input_files = InputFiles(self.input_path, list_files(self.input_path), self.output().path)
        return self._input_files

    def input_digests(self):
        digests = SOURCE_GRAPHS[self.source].input_digests(self)
        files = self.input_files()
        return digests if files is None else {**digests, "input_sha256": files.digest()}

    def save(self, directory, records, log):
        super().save(directory, records, log)
        if (files := self.input_files()) is not None:
            files.write(directory)


def read_release(task: CrawlTweets, log: StageLog) -> Iterator[dict]:
    from pipeline.sources.cmkp import read_release

    return read_release(task.input_path, log)


def read_archive(task: CrawlTweets, log: StageLog) -> Iterator[dict]:
    from pipeline.sources.archive import read_archive

    return read_archive(task.input_path, log)


def read_posts(task: CrawlTweets, log: StageLog) -> Iterator[dict]:
    from pipeline.sources.posts import read_posts

    return read_posts(task.input_path, log)


def crawl_api(task: CrawlTweets, log: StageLog) -> Iterator[dict]:
    from pipeline.sources.api import crawl_records

    # Pages go to their own directory, outside the atomic stage directory: they are the resume point, keyed by
    # what was asked (a rerun with another query or id file never resumes from this one's pages).
    return crawl_records(task.source, task.input_path, task.path("work", "crawl-pages", crawl_key(task)), log,
                         base_url=task.api_base_url, endpoint=task.api_endpoint, max_pages=task.max_pages,
                         token_env=task.token_env, progress=task.set_status_message,
                         start_time=task.start_time, end_time=task.end_time)


def crawl_key(task: CrawlTweets) -> str:
    """What an API crawl asks for, as a short digest: the query, endpoint and time window, or the id file's
    bytes."""
    asked = task.input_path.encode("utf-8") if task.source == "api" else Path(task.input_path).read_bytes()
    window = f"\0{task.start_time}\0{task.end_time}".encode() if task.start_time or task.end_time else b""
    digest = hashlib.sha256(task.source.encode() + b"\0" + task.api_endpoint.encode() + b"\0" + asked + window)
    return f"{task.source}-{digest.hexdigest()[:16]}"


def crawl_identity(task: CrawlTweets) -> dict:
    # An id file is read when the crawl runs: its bytes, not its path, say which posts are asked for.
    return {"crawl_key": crawl_key(task)}


def path_identity(task: CrawlTweets) -> dict:
    return {}


class FilterPosts(StageTask):
    """The paper's text-level filters (see `pipeline.clean.filter_posts`)."""

    stage = "filter"
    max_hashtags = luigi.IntParameter(default=5)
    language = luigi.Parameter(default="en")

    def process(self, records, log):
        from pipeline.clean import filter_posts

        return filter_posts(self.progress(records), log, self.max_hashtags, self.language)


class ImageStage(StageTask):
    """A stage that checks and stores images (`pipeline.clean.check_image`), remembering each outcome in
    `OUT/work/<stage>-journal.jsonl` (`pipeline.fetch.ImageJournal`, appended every `journal_batch` images):
    the journal lives outside the atomic stage directory, so a killed run resumes where the journal ends and
    no image that was already fetched and checked is fetched again.

    The checks are defined once here; ReleaseImages falls back on FetchImages' settings (`config_path`)."""

    max_bytes = luigi.IntParameter(default=20 * 1024 * 1024, description="size cap of one image file",
                                   config_path={"section": "FetchImages", "name": "max_bytes"})
    max_pixels = luigi.IntParameter(default=89_478_485, description="pixel cap (decompression bombs; Pillow's own)",
                                    config_path={"section": "FetchImages", "name": "max_pixels"})
    require_jpeg = luigi.BoolParameter(default=True, parsing=luigi.BoolParameter.EXPLICIT_PARSING,
                                       description="the paper's rule: only JPEG bytes are kept",
                                       config_path={"section": "FetchImages", "name": "require_jpeg"})
    journal_batch = luigi.IntParameter(default=50, significant=False,
                                       description="images per append to the journal (at most this many redone)")

    def journal(self):
        from pipeline.fetch import ImageJournal, ImageStore

        parameters = {"max_bytes": self.max_bytes, "max_pixels": self.max_pixels, "require_jpeg": self.require_jpeg}
        # This stage owns the store and its journal, and runs under its lock: a killed run's leftovers go.
        store, journal = ImageStore(self.dataset_dir), self.path("work", f"{self.stage}-journal.jsonl")
        store.remove_leftovers()
        remove_stale_temporaries(journal)
        return ImageJournal(journal, store, parameters, batch=self.journal_batch)


class FetchImages(ImageStage):
    """Each post's one photo fetched (or read from the archive), checked, decoded and stored by content hash
    in `OUT/images/` (see `pipeline.clean.fetch_images`)."""

    stage = "images"
    timeout = luigi.FloatParameter(default=20.0, description="seconds per HTTP connect and per read")
    deadline = luigi.FloatParameter(default=120.0, description="seconds for one whole download (too_slow after)")
    retries = luigi.IntParameter(default=3, description="HTTP retries, with exponential backoff")

    def process(self, records, log):
        from pipeline.clean import fetch_images
        from pipeline.fetch import download, make_session

        session = make_session(retries=self.retries)

        def get(url: str) -> bytes:
            return download(session, url, self.max_bytes, self.timeout, self.deadline)

        return fetch_images(self.progress(records), log, self.journal(), get, self.max_bytes, self.max_pixels,
                            self.require_jpeg)


class ReleaseImages(ImageStage):
    """A CMKP release's own images: the release directory's `images/` folder holds files named by the
    basename of each post's image URL (the authors' `*_url_map` keys its images by file name). Each is checked
    like a fetched image and stored by content hash; a missing or failing image is rejected with its reason,
    but its post is kept with `image_present` false, since the release's splits and texts are kept as given.
    The stage's counts are of images (`"unit": "images"` in counts.json), not of posts; a release without
    `images/` has none to count, and every post passes with `image_present` false.
    """

    stage = "release_images"
    unit = "images"

    def process(self, records, log):
        from pipeline.clean import release_images
        from pipeline.sources.cmkp import release_image_files

        return release_images(self.progress(records), log, self.journal(), release_image_files(self.input_path),
                              self.max_bytes, self.max_pixels, self.require_jpeg)


class DedupeImages(StageTask):
    """Posts whose image repeats an earlier one, exactly or nearly (dHash), are removed."""

    stage = "dedupe"
    max_distance = luigi.IntParameter(default=4, description="dHash Hamming distance counted as duplicate")

    def process(self, records, log):
        from pipeline.clean import dedupe_images

        return dedupe_images(self.progress(records), log, self.max_distance)


class TokenizePosts(StageTask):
    """Hashtags segmented (statistics mixed with this corpus's own words), posts tokenized, short ones removed."""

    stage = "tokenize"
    min_tokens = luigi.IntParameter(default=4)
    segmenter_stats_from = luigi.ListParameter(default=[], description="extra corpora for the word statistics")
    segmenter_learn_from = luigi.ListParameter(default=[], description="CMKP *_src.txt files to learn from")

    def process(self, records, log):
        from pipeline.clean import tokenize_posts
        from pipeline.segment import build_segmenter
        from pipeline.text import PostTokenizer

        self.set_status_message("building the hashtag segmenter")
        segmenter = build_segmenter(corpus_texts=[r["text"] for r in records],
                                    stats_from=self.segmenter_stats_from, learn_from=self.segmenter_learn_from)
        return tokenize_posts(self.progress(records), log, PostTokenizer(segmenter), self.min_tokens)


class FilterHashtags(StageTask):
    """Keyphrases used by fewer than `min_hashtag_count` posts are removed, then posts left without any."""

    stage = "hashtags"
    min_hashtag_count = luigi.IntParameter(default=10)

    def process(self, records, log):
        from pipeline.clean import filter_hashtags

        return filter_hashtags(records, log, self.min_hashtag_count)


@dataclass(frozen=True)
class SourceGraph:
    """How one source's posts become a split dataset."""

    read: Callable[[CrawlTweets, StageLog], Iterator[dict]]  # the crawl stage's reader of the source
    input_digests: Callable[[CrawlTweets], dict]  # what identifies a query or id file (part of identity)
    input_files: Callable[[str], list[Path]] | None  # the files read from the input path (their bytes: identity)
    stages: tuple[type[StageTask], ...]  # in pipeline order, CrawlTweets first; SplitPosts reads the last one's
    keeps_splits: bool  # True: records carry their split (a release); False: shuffled and cut 80/10/10


RELEASE_STAGES = (CrawlTweets, ReleaseImages)
CRAWL_STAGES = (CrawlTweets, FilterPosts, FetchImages, DedupeImages, TokenizePosts, FilterHashtags)
SOURCE_GRAPHS: dict[str, SourceGraph] = {
    "cmkp": SourceGraph(read_release, path_identity, cmkp.input_files, RELEASE_STAGES, keeps_splits=True),
    "archive": SourceGraph(read_archive, path_identity, archive.input_files, CRAWL_STAGES, keeps_splits=False),
    "api": SourceGraph(crawl_api, crawl_identity, None, CRAWL_STAGES, keeps_splits=False),
    "ids": SourceGraph(crawl_api, crawl_identity, None, CRAWL_STAGES, keeps_splits=False),
    "posts": SourceGraph(read_posts, path_identity, posts.input_files, CRAWL_STAGES, keeps_splits=False),
}


def carried_feature_groups(records: list[dict]) -> list[str]:
    """Feature groups the records themselves carry (a CMKP release's OCR and attributes), in format order."""
    from pipeline.sources.cmkp import RELEASE_FEATURES

    return [group for group, columns in RELEASE_FEATURES.items()
            if records and all(column in records[0] for column in columns)]


class SplitPosts(DatasetTask):
    """Assign posts to train/valid/test and plan the shards: `OUT/work/split/{split}.jsonl` + `plan.json`.

    A release keeps its own splits (a split it lacks gets no file, no shards and no manifest); other sources
    are shuffled with `seed` and cut 80/10/10. The plan records per split its posts, its number of shards and
    the feature groups its records carry, and how many posts of the dataset have an image.
    """

    shard_size = luigi.IntParameter(default=2000, description="posts per shard")
    seed = luigi.IntParameter(default=13, description="seed of the 80/10/10 shuffle")
    train_fraction = luigi.FloatParameter(default=0.8)
    valid_fraction = luigi.FloatParameter(default=0.1)

    def requires(self):
        return SOURCE_GRAPHS[self.source].stages[-1](**self.dataset())

    def output(self):
        return self.target("work", "split")

    def assign(self, records: list[dict]) -> dict[str, list[dict]]:
        if SOURCE_GRAPHS[self.source].keeps_splits:
            by_split: dict[str, list[dict]] = {}
            for record in records:
                by_split.setdefault(record["split"], []).append(record)
            return by_split
        # Sorting first makes the shuffle independent of the order posts were crawled in.
        records = sorted(records, key=lambda r: r["id"])
        random.Random(self.seed).shuffle(records)
        n_train = round(len(records) * self.train_fraction)
        n_valid = round(len(records) * self.valid_fraction)
        cuts = {"train": records[:n_train], "valid": records[n_train:n_train + n_valid],
                "test": records[n_train + n_valid:]}
        for split, members in cuts.items():
            for record in members:
                record["split"] = split
        return cuts

    def run(self):
        if self.shard_size < 1:
            raise ValueError(f"shard_size must be positive, got {self.shard_size}")
        records = list(read_jsonl(Path(self.input().path) / "posts.jsonl"))
        by_split = self.assign(records)
        plan = {"shard_size": self.shard_size, "source": self.source, "parameters": chain_parameters(self),
                "with_image": sum(bool(r.get("image_present")) for r in records), "splits": {}}
        with atomic_directory(self.output().path) as tmp:
            for split in SPLITS:
                if split not in by_split:
                    continue
                members = by_split[split]
                write_jsonl(tmp / f"{split}.jsonl", members)
                plan["splits"][split] = {"posts": len(members), "shards": -(-len(members) // self.shard_size),
                                         "carried_features": carried_feature_groups(members)}
            (tmp / "plan.json").write_text(json.dumps(plan, indent=1, sort_keys=True) + "\n")
        self.set_status_message(f"split: { {s: v['posts'] for s, v in plan['splits'].items()} }")
        self.set_progress_percentage(100)


def read_plan(split_dir: str | Path) -> dict:
    """The plan in `SplitPosts`' output directory (`OUT/work/split/`)."""
    return json.loads(Path(split_dir, "plan.json").read_text())


def text_shard_paths(dataset_dir: str | Path, split: str) -> list[Path]:
    """The text shards of a split, in order (needs `SplitPosts` done: the plan fixes their number)."""
    plan = read_plan(Path(dataset_dir, "work", "split"))
    shards_in_split = plan["splits"].get(split, {"shards": 0})["shards"]
    return [Path(dataset_dir, "work", "text", split, shard_name(i)) for i in range(shards_in_split)]


class ShardTask(DatasetTask):
    """A task producing one shard of one split."""

    split = luigi.ChoiceParameter(choices=SPLITS)
    shard_index = luigi.IntParameter()

    def shard_records(self, split_dir: str | Path) -> list[dict]:
        """This shard's records, read from `SplitPosts`' output `split_dir`."""
        size = read_plan(split_dir)["shard_size"]
        with open(Path(split_dir, f"{self.split}.jsonl"), encoding="utf-8") as f:
            lines = itertools.islice(f, self.shard_index * size, (self.shard_index + 1) * size)
            records = [json.loads(line) for line in lines]
        if not records:
            raise ValueError(f"{self.split} shard {self.shard_index} is not in the plan of {split_dir}")
        return records


class TextShard(ShardTask):
    """One text shard: the text datasets of docs/FORMAT.md for up to `shard_size` posts."""

    def requires(self):
        return SplitPosts(**self.dataset())

    def output(self):
        return self.target("work", "text", self.split, shard_name(self.shard_index))

    def run(self):
        records = self.shard_records(self.input().path)
        self.set_status_message(f"writing {len(records)} posts")
        columns = {
            "post_id": [r["id"] for r in records],
            "text": [r["text"] for r in records],
            "tokens": [r["tokens"] for r in records],
            "keyphrases": [";".join(r["keyphrases"]) for r in records],
            "hashtags": [";".join(r["hashtags"]) for r in records],
            "image_url": [r.get("image_url", "") for r in records],
            "image_sha256": [r.get("image_sha256", "") for r in records],
            "image_path": [r.get("image_path", "") for r in records],
            "image_present": [bool(r.get("image_present", False)) for r in records],
            "image_size": [r.get("image_size", [0, 0]) for r in records],
        }
        attrs = {"split": self.split, "shard_index": self.shard_index, "source": self.source,
                 "parameters": chain_parameters(self)}
        with self.output().temporary_path() as tmp:
            shards.write_shard(tmp, columns, attrs)
        self.set_progress_percentage(100)


class ReleaseFeatureShard(ShardTask):
    """A feature group the records carry (a CMKP release's `ocr` or `attributes`) as a work shard
    `OUT/work/<group>/{split}/shard-NNNNN.h5`, aligned with the text shard of the same index."""

    group = luigi.ChoiceParameter(choices=("ocr", "attributes"))

    def requires(self):
        return {"text": TextShard(**self.dataset(), split=self.split, shard_index=self.shard_index),
                "split": SplitPosts(**self.dataset())}

    def output(self):
        return self.target("work", self.group, self.split, shard_name(self.shard_index))

    def run(self):
        import numpy as np

        from pipeline.sources.cmkp import RELEASE_FEATURES

        records = self.shard_records(self.input()["split"].path)
        text_path = self.input()["text"].path
        text_ids = shards.read_shard(text_path, ["post_id"])["post_id"].tolist()
        if text_ids != [r["id"] for r in records]:
            raise RuntimeError(f"{text_path} is not aligned with the split plan; rebuild it")
        columns = {name: [r.get(name, "") for r in records] for name in RELEASE_FEATURES[self.group]}
        if self.group == "attributes":
            # The release gives the attribute words only, never their scores.
            columns["attribute_scores"] = np.full((len(records), 5), np.nan, dtype=np.float32)
        files = [f"{self.split}_{suffix}.txt" for suffix in RELEASE_FEATURES[self.group].values()]
        attrs = {f"{self.group}_weights": "cmkp-release", f"{self.group}_weights_sha256": "",
                 f"{self.group}_meta": {"carried_from": "CMKP release", "files": files}}
        with self.output().temporary_path() as tmp:
            shards.write_feature_shard(tmp, self.group, text_ids, columns, attrs)
        self.set_progress_percentage(100)
