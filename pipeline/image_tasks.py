"""Image stages: one Luigi task per feature group and text shard, each writing `OUT/work/<group>/{split}/shard-NNNNN.h5`.

    RunOCR            ocr_raw, ocr_tokens           (pipeline/ocr.py; cleaning vocabulary from OCRVocabulary)
    ExtractVGG        vgg (N, 49, 512) float16      (pipeline/vgg.py)
    ExtractBUTD       butd* (N, B, 2048) ...        (pipeline/butd, either backend)
    PredictAttributes attributes, attribute_scores  (pipeline/attributes.py; checkpoint from TrainAttributePredictor)

Rows are those of the text shard of the same split and index, in its order; rows without a valid image
(`image_present` false) get empty strings and zeros. `pipeline.tasks.AssembleShard` joins the work shards with
the text shard. torch is imported inside `run()` only (Luigi forks its workers; a CUDA context must not be
inherited); GPU-bound tasks hold the `gpu` resource so several workers share one GPU.
"""
from __future__ import annotations

import importlib.metadata
import json
import time
from pathlib import Path

import luigi
import numpy as np

from pipeline import shards
from pipeline.precision import PRECISIONS
from pipeline.text_tasks import DatasetTask, ShardTask, SplitPosts, TextShard, read_jsonl, read_plan, shard_name


class ImageFeatureShard(ShardTask):
    """Base of the per-shard feature tasks: reads the text shard, writes the group's work shard.

    `requires()` is a dict holding at least `"text"` (the text shard of the same split and index)."""

    group: str = ""

    def requires(self):
        return {"text": TextShard(**self.dataset(), split=self.split, shard_index=self.shard_index)}

    def output(self):
        return self.target("work", self.group, self.split, shard_name(self.shard_index))

    def rows(self) -> tuple[list[str], list[int], list[Path]]:
        """(post ids of the text shard, rows that have a valid image, those images' paths)."""
        text = shards.read_shard(self.input()["text"].path, ["post_id", "image_present", "image_path"])
        rows = [i for i, present in enumerate(text["image_present"]) if present]
        return text["post_id"].tolist(), rows, [self.path(text["image_path"][i]) for i in rows]

    def load_images(self, paths):
        from pipeline.images import open_rgb

        return [open_rgb(path) for path in paths]

    def batches(self, rows: list[int], paths: list[Path], batch_size: int):
        """(rows, their decoded images) per batch of `batch_size`, reporting progress after each batch."""
        start = time.perf_counter()
        for done in range(0, len(rows), batch_size):
            chunk = slice(done, done + batch_size)
            yield rows[chunk], self.load_images(paths[chunk])
            self.report(min(done + batch_size, len(rows)), len(rows), start)

    def report(self, done: int, total: int, start: float) -> None:
        rate = done / max(time.perf_counter() - start, 1e-9)
        self.set_progress_percentage(int(100 * done / max(total, 1)))
        self.set_status_message(f"{self.group} {self.split}/{self.shard_index}: {done}/{total} images, "
                                f"{rate:.2f} images/s")

    def write(self, post_ids, columns, attrs) -> None:
        with self.output().temporary_path() as tmp:
            shards.write_feature_shard(tmp, self.group, post_ids, columns, attrs)
        self.set_progress_percentage(100)


class OCRVocabulary(DatasetTask):
    """`OUT/work/ocr/vocabulary.json`: words of the posts and keyphrases of all splits (the OCR cleaning keeps
    only OCR tokens that occur there, as the authors' code does)."""

    def requires(self):
        return SplitPosts(**self.dataset())

    def output(self):
        return self.target("work", "ocr", "vocabulary.json")

    def run(self):
        from pipeline.ocr import corpus_vocabulary

        split_dir = self.input().path
        records = [r for split in read_plan(split_dir)["splits"] for r in read_jsonl(Path(split_dir, f"{split}.jsonl"))]
        words = corpus_vocabulary((r["tokens"] for r in records), (";".join(r["keyphrases"]) for r in records))
        with self.output().temporary_path() as tmp:
            Path(tmp).write_text(json.dumps({"posts": len(records), "words": sorted(words)}) + "\n")


class RunOCR(ImageFeatureShard):
    """Tesseract OCR of a shard's images (process pool) and the paper's cleaning."""

    group = "ocr"
    resources = {"cpu": 1}      # its pool takes every core of the host (luigi.cfg [resources])
    workers = luigi.IntParameter(default=0, significant=False, description="OCR processes (0: all cores)")
    tessdata = luigi.Parameter(default="/usr/share/tesseract-ocr/5/tessdata", description="Tesseract language data")

    def requires(self):
        return {**super().requires(), "vocabulary": OCRVocabulary(**self.dataset())}

    def run(self):
        from pipeline import ocr

        post_ids, rows, paths = self.rows()
        start = time.perf_counter()
        readings = ocr.read_images([str(p) for p in paths], workers=self.workers, tessdata=self.tessdata,
                                   progress=lambda done, rate: self.report(done, len(paths), start))
        vocabulary = set(json.loads(Path(self.input()["vocabulary"].path).read_text())["words"])
        tokenize = ocr.social_tokenizer()
        raw, cleaned = [""] * len(post_ids), [""] * len(post_ids)
        for row, reading in zip(rows, readings):
            raw[row] = reading.text
            cleaned[row] = " ".join(ocr.clean_ocr(reading.text, vocabulary, tokenize))
        # Images the deadline stopped keep what was read before it (nothing, where their worker was killed).
        timed_out = [post_ids[row] for row, reading in zip(rows, readings) if reading.timed_out]
        counts = {"images": len(rows), "with_raw_text": sum(bool(raw[r]) for r in rows),
                  "with_ocr_tokens": sum(bool(cleaned[r]) for r in rows), "ocr_timeout": len(timed_out)}
        # Not `import tesserocr` here: its OpenMP runtime must start in the pool's workers, with one thread each.
        meta = {"engine": f"tesserocr {importlib.metadata.version('tesserocr')}",
                "tessdata": self.tessdata, "passes": "as is; light/dark glyphs binarised (first clean wins)",
                "light_threshold": ocr.LIGHT_THRESHOLD, "dark_threshold": ocr.DARK_THRESHOLD,
                "cleaning": "authors' process_ocr.py rules", "vocabulary_words": len(vocabulary), "counts": counts,
                "ocr_timeout_posts": timed_out}
        self.write(post_ids, {"ocr_raw": raw, "ocr_tokens": cleaned},
                   {"ocr_weights": "tesseract eng", "ocr_weights_sha256":
                    shards.sha256_file(Path(self.tessdata, "eng.traineddata")), "ocr_meta": meta,
                    "random_weights": False})


class ExtractVGG(ImageFeatureShard):
    """VGG-16 conv5 grids (N, 49, 512) float16."""

    group = "vgg"
    resources = {"gpu": 1}
    vgg_weights = luigi.Parameter(default="IMAGENET1K_V1", description="enum entry, local file, or random[:SEED]")
    vgg_resize = luigi.ChoiceParameter(default="lanczos", choices=("lanczos", "weights"))
    vgg_image_size = luigi.IntParameter(default=224, description="lanczos: the side images are resized to")
    vgg_precision = luigi.ChoiceParameter(default="auto", choices=PRECISIONS)
    batch_size = luigi.IntParameter(default=32, significant=False)
    device = luigi.Parameter(default="auto", significant=False)

    def run(self):
        from pipeline.vgg import CHANNELS, GRID, VGGConfig, VGGGridExtractor

        post_ids, rows, paths = self.rows()
        extractor = VGGGridExtractor(VGGConfig(weights=self.vgg_weights, resize=self.vgg_resize,
                                               image_size=self.vgg_image_size, precision=self.vgg_precision,
                                               batch_size=self.batch_size, device=self.device))
        grids = np.zeros((len(post_ids), GRID * GRID, CHANNELS), dtype=np.float16)
        for batch_rows, images in self.batches(rows, paths, self.batch_size):
            grids[batch_rows] = extractor.extract(images)
        self.write(post_ids, {"vgg": grids}, {**extractor.provenance(), "random_weights": extractor.weights.random})


class ExtractBUTD(ImageFeatureShard):
    """Bottom-up-attention objects through `pipeline.butd` (backend `torchvision` or `detectron2`)."""

    group = "butd"
    resources = {"gpu": 1}
    butd_backend = luigi.ChoiceParameter(default="torchvision", choices=("torchvision", "detectron2"))
    butd_weights = luigi.Parameter(default="COCO_V1", description="local file, enum entry, or random[:SEED]")
    # a check on the file butd_weights names, not a part of the features' identity
    butd_weights_sha256 = luigi.Parameter(
        default="", significant=False,
        description="sha256 of the local weights file, checked before it is loaded (detectron2: required for a "
                    ".pkl, which is unpickled)")
    butd_max_boxes = luigi.IntParameter(default=36)
    butd_min_boxes = luigi.IntParameter(default=36)
    butd_conf_threshold = luigi.FloatParameter(default=0.2)
    butd_min_size = luigi.IntParameter(default=600, description="images resized to this shorter side...")
    butd_max_size = luigi.IntParameter(default=1000, description="...unless the longer side exceeds this")
    butd_proposals = luigi.IntParameter(default=300, description="region proposals scored per image")
    batch_size = luigi.IntParameter(default=4, significant=False)
    device = luigi.Parameter(default="auto", significant=False)

    def run(self):
        from pipeline.butd import FEATURE_DIM, build_extractor

        post_ids, rows, paths = self.rows()
        extractor = build_extractor(self.butd_backend, weights=self.butd_weights, device=self.device,
                                    max_boxes=self.butd_max_boxes, min_boxes=self.butd_min_boxes,
                                    conf_threshold=self.butd_conf_threshold, weights_sha256=self.butd_weights_sha256,
                                    min_size=self.butd_min_size, max_size=self.butd_max_size,
                                    num_proposals=self.butd_proposals)
        n, boxes = len(post_ids), self.butd_max_boxes
        columns = {
            "butd": np.zeros((n, boxes, FEATURE_DIM), np.float16),
            "butd_boxes": np.zeros((n, boxes, 4), np.float32),
            "butd_num_boxes": np.zeros(n, np.int16),
            "butd_objects": np.zeros((n, boxes), np.int16),
            "butd_object_scores": np.zeros((n, boxes), np.float16),
            "butd_attributes": np.zeros((n, boxes), np.int16),
            "butd_attribute_scores": np.zeros((n, boxes), np.float16),
        }
        sources = {"butd": "features", "butd_boxes": "boxes", "butd_objects": "objects",
                   "butd_object_scores": "object_scores", "butd_attributes": "attributes",
                   "butd_attribute_scores": "attribute_scores"}
        for batch_rows, images in self.batches(rows, paths, self.batch_size):
            for row, out in zip(batch_rows, extractor.extract(images)):
                k = len(out["boxes"])
                columns["butd_num_boxes"][row] = k
                for name, key in sources.items():
                    columns[name][row, :k] = out[key]
        provenance = dict(extractor.provenance())
        attrs = {"butd_weights": provenance.pop("weights"), "butd_weights_sha256": provenance.pop("weights_sha256"),
                 "random_weights": bool(provenance.pop("random_weights")),
                 "butd_object_vocab": provenance.pop("object_vocab"),
                 "butd_attribute_vocab": provenance.pop("attribute_vocab"), "butd_meta": provenance}
        self.write(post_ids, columns, attrs)


class TrainAttributePredictor(DatasetTask):
    """`OUT/work/attributes/predictor.pt`: the ResNet multi-label attribute predictor, trained from a COCO
    captions JSON and its images (`sample`: the small captioned set of pipeline.attributes, for the demo)."""

    resources = {"gpu": 1}
    attribute_captions = luigi.Parameter(default="sample", description="COCO captions JSON, or sample")
    attribute_images = luigi.Parameter(default="", description="its image directory (default: images/ beside it)")
    attribute_arch = luigi.ChoiceParameter(default="resnet152", choices=("resnet152", "resnet50", "resnet18"))
    attribute_backbone_weights = luigi.Parameter(default="IMAGENET1K_V1")
    attribute_vocab_size = luigi.IntParameter(default=1000)
    attribute_image_size = luigi.IntParameter(default=224)
    attribute_epochs = luigi.IntParameter(default=10)
    attribute_batch_size = luigi.IntParameter(default=32)
    attribute_lr = luigi.FloatParameter(default=1e-4)
    attribute_seed = luigi.IntParameter(default=0)
    device = luigi.Parameter(default="auto", significant=False)

    def output(self):
        return self.target("work", "attributes", "predictor.pt")

    def run(self):
        from pipeline import attributes

        captions = self.attribute_captions
        if captions == "sample":
            captions = attributes.write_sample_captioned_set(self.path("work", "attributes", "sample-captions"))
        images = self.attribute_images or Path(captions).parent / "images"
        config = attributes.AttributeConfig(
            arch=self.attribute_arch, backbone_weights=self.attribute_backbone_weights,
            vocab_size=self.attribute_vocab_size, image_size=self.attribute_image_size, epochs=self.attribute_epochs,
            batch_size=self.attribute_batch_size, lr=self.attribute_lr, seed=self.attribute_seed)

        def progress(epoch, epochs, loss):
            self.set_progress_percentage(int(100 * epoch / epochs))
            self.set_status_message(f"attribute predictor: epoch {epoch}/{epochs}, loss {loss:.4f}")

        with self.output().temporary_path() as tmp:
            attributes.train(config, captions, images, tmp, device=self.device, progress=progress)


class PredictAttributes(ImageFeatureShard):
    """Top-5 attribute words and scores per image from the trained predictor."""

    group = "attributes"
    resources = {"gpu": 1}
    batch_size = luigi.IntParameter(default=32, significant=False)
    device = luigi.Parameter(default="auto", significant=False)

    def requires(self):
        return {**super().requires(), "predictor": TrainAttributePredictor(**self.dataset())}

    def run(self):
        from pipeline.attributes import TOP_K, AttributePredictor

        post_ids, rows, paths = self.rows()
        predictor = AttributePredictor(self.input()["predictor"].path, device=self.device, batch_size=self.batch_size)
        words, scores = [""] * len(post_ids), np.zeros((len(post_ids), TOP_K), np.float32)
        for batch_rows, images in self.batches(rows, paths, self.batch_size):
            top_words, top_scores = predictor.predict(images)
            for row, line, values in zip(batch_rows, top_words, top_scores):
                words[row], scores[row] = line, values
        self.write(post_ids, {"attributes": words, "attribute_scores": scores},
                   {**predictor.provenance_attrs, "random_weights": predictor.random})


# Feature group -> the task computing its work shard (registered in pipeline.tasks.FEATURE_TASKS).
IMAGE_FEATURE_TASKS = {"ocr": RunOCR, "attributes": PredictAttributes, "vgg": ExtractVGG, "butd": ExtractBUTD}
