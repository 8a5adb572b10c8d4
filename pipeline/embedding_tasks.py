"""The text embedding stage: `OUT/work/text_embedding/{split}/shard-NNNNN.h5`, one sentence vector per post.

    EmbedPosts   text_embedding (N, D) float32, unit norm   (pipeline/text_embedding.py)

It reads only text (the text shard, and the OCR work shard where the split has OCR), so it runs for every
source, a CMKP release without images included.
"""
from __future__ import annotations

import time

import luigi
import numpy as np

from pipeline import shards
from pipeline.image_tasks import ImageFeatureShard
from pipeline.text_embedding import DEFAULT_MODEL, GROUP, TextEncoder, embedding_text


class EmbedPosts(ImageFeatureShard):
    """Sentence embeddings of each post's tokens followed by its OCR tokens."""

    group = GROUP
    reads_groups = ("ocr",)  # the shard's OCR work shard, where it holds one (see pipeline.tasks.feature_task)
    resources = {"gpu": 1}
    text_embedding_model = luigi.Parameter(default=DEFAULT_MODEL,
                                           description="a local model directory or a Hub id in the local cache")
    text_embedding_ocr = luigi.BoolParameter(default=True, description="append the post's OCR tokens")
    batch_size = luigi.IntParameter(default=64, significant=False)
    device = luigi.Parameter(default="auto", significant=False)
    shard_features = luigi.ListParameter(default=[], description="the groups the final shard holds")
    shard_carried = luigi.ListParameter(default=[], description="those of them the records carry")

    def requires(self):
        deps = super().requires()
        if self.text_embedding_ocr and "ocr" in self.shard_features:
            from pipeline.tasks import feature_task
            deps["ocr"] = feature_task("ocr", self.dataset(), self.split, self.shard_index, self.shard_features,
                                       self.shard_carried)
        return deps

    def run(self):
        text = shards.read_shard(self.input()["text"].path, ["post_id", "tokens"])
        post_ids = text["post_id"].tolist()
        ocr = [""] * len(post_ids)
        if "ocr" in self.input():
            part = shards.read_shard(self.input()["ocr"].path, ["post_id", "ocr_tokens"])
            if part["post_id"].tolist() != post_ids:
                raise RuntimeError(f"{self.input()['ocr'].path} is not aligned with {self.input()['text'].path}")
            ocr = part["ocr_tokens"].tolist()
        encoder = TextEncoder(self.text_embedding_model, device=self.device, batch_size=self.batch_size)
        texts = [embedding_text(t, o) for t, o in zip(text["tokens"].tolist(), ocr)]
        vectors = np.zeros((len(texts), encoder.dim), np.float32)
        start, step = time.perf_counter(), self.batch_size * 8
        for done in range(0, len(texts), step):
            vectors[done:done + step] = encoder(texts[done:done + step])
            n = min(done + step, len(texts))
            self.set_progress_percentage(int(100 * n / max(len(texts), 1)))
            self.set_status_message(f"{GROUP} {self.split}/{self.shard_index}: {n}/{len(texts)} posts, "
                                    f"{n / max(time.perf_counter() - start, 1e-9):.1f} posts/s")
        self.write(post_ids, {GROUP: vectors}, {**encoder.info.attrs(GROUP), "random_weights": False})
