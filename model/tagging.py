"""Tagging posts a model never saw: raw text and an optional image in, ranked keyphrases with scores out.

    from model.tagging import Tagger
    tagger = Tagger.load("build/sample-run", device="cpu")          # checks, then loads everything once
    tagger.tag([{"id": "1", "text": "sunday morning #coffeetime", "image": "cup.jpg"}, "just text"])
    # [{"id": "1", "keyphrases": [{"text": "coffee time", "score": 0.93}, ...], "modalities": [...],
    #   "gold": ["coffee time"]}, {"id": "2", ...}]

Featurisation is the training run's, checked before anything is loaded (`model.provenance`): the posts'
tokenizer with the run's hashtag segmenter (trailing hashtags removed from the input and kept as `gold`, mid-post
ones segmented into words), OCR cleaned against the run's vocabulary, VGG / BUTD / attributes rebuilt from the
shards' recorded weights and settings, and refused where the rebuilt extractor describes itself differently.
A model that reads the posts' sentence embeddings (`ModelConfig.uses_text_embedding`) gets them from the encoder
the training shards record (name, weights sha256, pooling), reading what the pipeline's `EmbedPosts` read: the
post's tokens, then its OCR tokens where training appended them.

A post's image may be a path, an http(s) URL, bytes or a PIL image; it is checked as the pipeline checks images
(`pipeline.images.validate_image`) and decoded once, and every feature group reads that one decoded image. A post
without an image, or whose image is rejected, is tagged from its text with the vision modality absent (its
`modalities` say so, `image_rejected` says why). Identical posts are featurised and ranked once and share the
answer. All stages run batched: OCR in a process pool kept for the tagger's life (reading while this process runs
the other extractors), the extractors, the sentence encoder and the model `batch_size` posts at a time on the
device.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import time
from collections import Counter
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from model.beam import candidates_batch, ensemble_scores, model_scores
from model.data import MAX_ATTRIBUTES, Post, collate, encode_post
from model.provenance import (TEXT_EMBEDDING, Featurisation, FeaturisationError, check_featurisation,
                              check_same_featurisation)
from model.train import CHECKPOINT, resolve_device

STAGES = ("decode", "text", "ocr", "attributes", "vgg", "butd", "text_embedding", "model")
# Recorded extractor settings that may differ without changing the features' meaning.
RUNTIME_KEYS = {"device", "batch_size", "versions", "precision", "precision_requested", "precision_reason"}


@dataclass
class PreparedPost:
    """One post after its text and image are read: what the model's featurisation starts from."""
    id: str
    tokens: list[str]
    gold: list[str]
    image: Any = None                       # decoded RGB PIL image, or None
    image_key: str = ""                     # sha256 of the image (bytes, or pixels for a PIL image)
    image_rejected: tuple[str, str] | None = None
    ocr: list[str] | None = None            # carried OCR tokens (a CMKP release), else computed
    attributes: list[str] | None = None     # carried attribute words, else computed
    features: dict[str, Any] = field(default_factory=dict)


def _differences(recorded: dict, rebuilt: dict, ignore=frozenset()) -> list[str]:
    keys = set(recorded) | set(rebuilt)
    return [f"{k}: recorded {recorded.get(k)!r}, this run {rebuilt.get(k)!r}" for k in sorted(keys - ignore)
            if recorded.get(k) != rebuilt.get(k)]


def _loads(value):
    return json.loads(value) if isinstance(value, str) else value


def _device_precision(recorded: str, device: torch.device) -> str:
    """The recorded precision where this device has it (fp16 needs CUDA; there fp32 stands in)."""
    return "fp32" if recorded == "fp16" and device.type != "cuda" else recorded


class Tagger:
    """A trained run applied to new posts. `load` once; `tag` as often as needed (no reloading)."""

    def __init__(self, run_dirs: list[Path], models: list, featurisation: Featurisation, device: torch.device,
                 extractors: dict[str, Any], tokenizer, ocr_pool, batch_size: int, notes: list[str]):
        self.run_dirs, self.models, self.featurisation, self.device = run_dirs, models, featurisation, device
        self.model = models[0]             # the members share its config and vocabularies
        self.extractors, self.tokenizer, self.ocr_pool = extractors, tokenizer, ocr_pool
        self.batch_size = batch_size
        self.notes = notes
        self.timings = Counter()           # stage -> wall seconds spent in it, over all `tag` calls
        self._session = None
        self._background = futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="ocr")

    # ---------------------------------------------------------------------------------------------- loading
    @classmethod
    def load(cls, run_dir: str | Path | Sequence[str | Path], device: str = "auto", batch_size: int = 32,
             ocr_workers: int = 0, threads: int | None = None,
             locate: dict[str, str | Path] | None = None) -> "Tagger":
        """Check the run's featurisation (raising `FeaturisationError` naming what differs), then load the model,
        the tokenizer and the feature extractors the model reads. `locate` places what the run points to outside
        itself where its recorded path is gone (`{"attributes": PREDICTOR_FILE, "text_embedding": ENCODER_DIR,
        "ocr": TESSDATA_DIR, "segmenter:NAME": FILE}`), each checked against the recorded sha256 (and the
        encoder against its recorded pooling) as if found where recorded. Several run directories: an ensemble of seeds
        of one configuration, each post ranked by the mean of the members' ranking scores
        (`model.beam.ensemble_scores`, as `cmkp-predict --model A --model B`); every member must featurise
        posts as the first does."""
        from model.checkpoint import config_from_dict, load as load_record, model_from_record
        from model.train import check_one_configuration

        run_dirs = [Path(run_dir)] if isinstance(run_dir, (str, Path)) else [Path(r) for r in run_dir]
        if not run_dirs:
            raise ValueError("no run directory given")
        checkpoints = [r / CHECKPOINT for r in run_dirs]
        for checkpoint in checkpoints:
            if not checkpoint.is_file():
                raise FileNotFoundError(f"{checkpoint} is missing: RUN_DIR is a cmkp-train output directory")
        records = [load_record(c) for c in checkpoints]                # read once, built into models below
        featurisations = [check_featurisation(r, config_from_dict(record["config"], str(c)), locate)
                          for r, c, record in zip(run_dirs, checkpoints, records)]
        check_same_featurisation(featurisations)
        featurisation = featurisations[0]
        notes = [f"{g}: carried by the CMKP release in training; absent for new posts (no OCR / attribute "
                 f"model to compute it)" for g in featurisation.carried]
        # Before torch starts its threads: the OCR workers are forked from this process.
        ocr_pool = None
        if "ocr" in featurisation.groups:
            from pipeline.ocr import OCRPool
            ocr_pool = OCRPool(ocr_workers, featurisation.place("ocr"))
        if threads:
            torch.set_num_threads(threads)
        dev = resolve_device(device)
        try:
            extractors = {g: cls._build(g, entry, featurisation.place(g), dev, batch_size, notes)
                          for g, entry in featurisation.groups.items() if g != "ocr"}
            if "ocr" in featurisation.groups:
                extractors["ocr"] = cls._ocr(featurisation)
            models = [model_from_record(record, str(c), dev).eval() for c, record in zip(checkpoints, records)]
            check_one_configuration(models, [str(c) for c in checkpoints])
            if TEXT_EMBEDDING in extractors:
                for model, checkpoint in zip(models, checkpoints):
                    cls._check_embedded_as_trained(model, extractors[TEXT_EMBEDDING], checkpoint)
            tokenizer = cls._tokenizer(featurisation)
        except BaseException:
            if ocr_pool is not None:
                ocr_pool.close()
            raise
        if featurisation.random_weights:
            notes.append("image features from seeded RANDOM weights (as in training): they identify repeated "
                         "images, they carry no ImageNet semantics")
        if len(models) > 1:
            notes.append(f"an ensemble of {len(models)} runs: each post ranked by the mean of their ranking scores")
        return cls(run_dirs, models, featurisation, dev, extractors, tokenizer, ocr_pool, batch_size, notes)

    @staticmethod
    def _tokenizer(featurisation: Featurisation):
        from pipeline.segment import build_segmenter
        from pipeline.text import PostTokenizer

        segmenter = build_segmenter(corpus_texts=featurisation.segmenter_texts(),
                                    stats_from=featurisation.segmenter_files("segmenter_stats_from"),
                                    learn_from=featurisation.segmenter_files("segmenter_learn_from"))
        return PostTokenizer(segmenter)

    @staticmethod
    def _ocr(featurisation: Featurisation):
        from pipeline import ocr

        entry = featurisation.groups["ocr"]
        meta = entry["meta"]
        vocabulary = featurisation.ocr_vocabulary()
        rebuilt = {"light_threshold": ocr.LIGHT_THRESHOLD, "dark_threshold": ocr.DARK_THRESHOLD,
                   "vocabulary_words": len(vocabulary)}
        differ = [d for d in _differences({k: meta.get(k) for k in rebuilt}, rebuilt)]
        if differ:
            raise FeaturisationError(f"ocr: this OCR differs from the training shards': {'; '.join(differ)}")
        return {"vocabulary": vocabulary, "tokenize": ocr.social_tokenizer(), "clean": ocr.clean_ocr}

    @staticmethod
    def _check_embedded_as_trained(model, encoder, checkpoint: Path) -> None:
        """The model's training posts were embedded by the encoder this tagger built."""
        from model.data import text_embedding_provenance
        from model.train import check_embedded_as_trained

        try:
            check_embedded_as_trained(model, text_embedding_provenance(encoder.info.attrs(TEXT_EMBEDDING)),
                                      f"{TEXT_EMBEDDING}: {checkpoint}, new posts")
        except ValueError as err:
            raise FeaturisationError(str(err)) from err

    @staticmethod
    def _build(group: str, entry: dict, place: str, device: torch.device, batch_size: int, notes: list[str]):
        """The group's extractor rebuilt from its recorded provenance, its weights loaded from `place`; refused
        where it describes itself differently from the training shards' record."""
        from pipeline.weights import spec_of

        meta = _loads(entry["meta"])
        moved = place if place != entry["weights"] else ""   # where `locate` put the weights file, if it did
        if group == TEXT_EMBEDDING:
            from model.data import check_text_embedding, text_embedding_provenance
            from pipeline.text_embedding import TextEncoder

            encoder = TextEncoder(place, device=str(device), batch_size=batch_size)
            recorded = {"weights": entry["weights"], "sha256": entry["weights_sha256"], "meta": meta}
            try:
                check_text_embedding(recorded, text_embedding_provenance(encoder.info.attrs(group)), "new posts")
            except ValueError as err:
                raise FeaturisationError(f"{group}: the encoder this run builds differs from the one the training "
                                         f"shards record: {err}") from err
            return encoder
        if group == "vgg":
            import dataclasses

            from pipeline.vgg import VGGConfig, VGGGridExtractor

            settings = {f.name: meta[f.name] for f in dataclasses.fields(VGGConfig) if f.name in meta}
            settings.update(weights=spec_of(entry["weights"]), precision=_device_precision(meta["precision"], device),
                            batch_size=batch_size, device=str(device))
            extractor = VGGGridExtractor(VGGConfig(**settings), weights_place=moved or None)
            attrs = extractor.provenance()
            rebuilt = {"weights": attrs["vgg_weights"], "weights_sha256": attrs["vgg_weights_sha256"],
                       "meta": json.loads(attrs["vgg_meta"])}
        elif group == "butd":
            from pipeline.butd import build_extractor

            rule = meta["box_rule"]
            kwargs = {"weights": spec_of(entry["weights"]), "weights_sha256": entry["weights_sha256"],
                      "device": str(device), "max_boxes": rule["max_boxes"], "min_boxes": rule["min_boxes"],
                      "conf_threshold": rule["conf_threshold"], "min_size": meta.get("input_min_size"),
                      "max_size": meta.get("input_max_size"), "detector": meta.get("detector"),
                      "num_proposals": meta.get("proposals", {}).get("rpn_post_nms_top_n"),
                      "precision": _device_precision(meta.get("precision", "auto"), device),
                      "res5_dilation": "dilation 2" in meta.get("feature", ""), "weights_place": moved}
            from pipeline.butd import BACKENDS
            module, name = BACKENDS[meta["backend"]].split(":")
            import importlib
            accepted = inspect.signature(getattr(importlib.import_module(module), name)).parameters
            # Settings recorded under the constructor's own parameter names travel as they are.
            kwargs.update({k: v for k, v in meta.items() if k in accepted and k not in kwargs})
            extractor = build_extractor(meta["backend"], **{k: v for k, v in kwargs.items()
                                                            if k in accepted and v not in (None, "")})
            provenance = dict(extractor.provenance())
            rebuilt = {"weights": provenance.pop("weights"), "weights_sha256": provenance.pop("weights_sha256")}
            for key in ("random_weights", "object_vocab", "attribute_vocab"):
                provenance.pop(key)
            rebuilt["meta"] = provenance
        elif group == "attributes":
            from pipeline.attributes import AttributePredictor

            extractor = AttributePredictor(place, device=str(device), batch_size=batch_size,
                                           precision=_device_precision(meta.get("precision", "auto"), device))
            attrs = extractor.provenance_attrs
            rebuilt = {"weights": entry["weights"], "weights_sha256": attrs["attributes_weights_sha256"],
                       "meta": json.loads(attrs["attributes_meta"])}
        else:
            raise FeaturisationError(f"{group}: no extractor for this feature group")
        differ = _differences({"weights": entry["weights"], "weights_sha256": entry["weights_sha256"]},
                              {"weights": rebuilt["weights"], "weights_sha256": rebuilt["weights_sha256"]})
        # the meta's own `weights` is the spec as typed (`random`, `random:0`): the name above is what counts
        differ += _differences(meta, rebuilt["meta"], ignore=RUNTIME_KEYS | {"weights"})
        if differ:
            raise FeaturisationError(f"{group}: the extractor this run builds differs from the one the training "
                                     f"shards record: {'; '.join(differ)}")
        if meta.get("precision") != rebuilt["meta"].get("precision"):
            notes.append(f"{group}: precision {rebuilt['meta'].get('precision')} (training: "
                         f"{meta.get('precision')}, not available on {device.type})")
        return extractor

    def close(self) -> None:
        self._background.shutdown()
        if self.ocr_pool is not None:
            self.ocr_pool.close()
            self.ocr_pool = None

    def __enter__(self) -> "Tagger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------ what it reads
    @property
    def groups(self) -> list[str]:
        """The feature groups computed for new posts."""
        return list(self.featurisation.groups)

    @property
    def image_groups(self) -> list[str]:
        """Those computed from the post's image."""
        return [g for g in self.groups if g != TEXT_EMBEDDING]

    @property
    def random_weights(self) -> bool:
        return self.featurisation.random_weights

    def describe(self) -> dict:
        """What the tagger computes and from which weights (for reports)."""
        ensemble = {"ensemble": [str(r) for r in self.run_dirs]} if len(self.run_dirs) > 1 else {}
        return {"run": str(self.run_dirs[0]), **ensemble, "config": self.model.config.name,
                "device": self.device.type, "groups": {g: {"weights": e["weights"], "weights_sha256": e["weights_sha256"]}
                           for g, e in self.featurisation.groups.items()},
                "carried_groups_absent": self.featurisation.carried,
                "located": {k: str(v) for k, v in sorted(self.featurisation.located.items())},
                "random_weights": self.random_weights, "notes": self.notes}

    # ------------------------------------------------------------------------------------------- preparation
    def prepare(self, post, index: int = 0) -> PreparedPost:
        """A post (a string, or a dict with `text` and optionally `id`, `image`, `entities`; or pre-tokenized
        `tokens` with gold `keyphrases` and carried `ocr_tokens` / `attributes`) -> its tokens and image."""
        if isinstance(post, str):
            post = {"text": post}
        start = time.perf_counter()
        if "tokens" in post:
            tokens = post["tokens"].split() if isinstance(post["tokens"], str) else list(post["tokens"])
            gold = list(post.get("keyphrases", []))
        else:
            tokens, gold, _ = self.tokenizer.tokenize_post(post.get("text", ""), post.get("entities"))
        prepared = PreparedPost(id=str(post.get("id", index)), tokens=tokens, gold=gold)
        for name, column in (("ocr", "ocr_tokens"), ("attributes", "attributes")):
            if post.get(column):
                setattr(prepared, name, post[column].split() if isinstance(post[column], str) else post[column])
        self.timings["text"] += time.perf_counter() - start
        image = post.get("image")
        if image is not None and image != "" and self.image_groups:    # a text-only model never decodes images
            start = time.perf_counter()
            self._decode(prepared, image)
            self.timings["decode"] += time.perf_counter() - start
        return prepared

    def _decode(self, prepared: PreparedPost, image) -> None:
        from PIL import Image

        from pipeline.fetch import FetchError, download, make_session, read_local
        from pipeline.images import GRAYSCALE_MODES, ImageRejected, validate_image

        checks = self.featurisation.record["image_checks"]
        try:
            if isinstance(image, Image.Image):
                if image.mode in GRAYSCALE_MODES:
                    raise ImageRejected("grayscale", f"mode {image.mode}")
                rgb = image.convert("RGB")
                prepared.image, prepared.image_key = rgb, hashlib.sha256(rgb.tobytes()).hexdigest()
                return
            if isinstance(image, (bytes, bytearray)):
                data = bytes(image)
            elif "://" in str(image):
                if self._session is None:
                    self._session = make_session()
                data = download(self._session, str(image), checks["max_bytes"], timeout=20.0)
            else:
                data = read_local(image, checks["max_bytes"])
            valid = validate_image(data, max_pixels=checks["max_pixels"], require_jpeg=checks["require_jpeg"])
            prepared.image, prepared.image_key = valid.image, hashlib.sha256(data).hexdigest()
        except (FetchError, ImageRejected) as err:
            prepared.image_rejected = (err.reason, err.detail)
        except OSError as err:          # a path that cannot be read
            prepared.image_rejected = ("image_missing", str(err))

    # ----------------------------------------------------------------------------------------------- features
    def _features(self, posts: list[PreparedPost]) -> None:
        """Each group's features for the posts' images, computed once per distinct image, batched."""
        distinct: dict[str, PreparedPost] = {}
        for p in posts:
            if p.image is not None:
                distinct.setdefault(p.image_key, p)
        keys = list(distinct)
        images = [distinct[k].image for k in keys]
        if not images:
            return
        # OCR reads in its worker processes while this one runs the other extractors (each uses a core)
        ocr = self._background.submit(self._timed_features, "ocr", images) if "ocr" in self.image_groups else None
        try:
            computed = {g: self._timed_features(g, images) for g in self.image_groups if g != "ocr"}
        finally:
            if ocr is not None:
                futures.wait([ocr])         # never leave the pool reading past this call
        if ocr is not None:
            computed["ocr"] = ocr.result()
        by_key = {k: {g: values[i] for g, values in computed.items()} for i, k in enumerate(keys)}
        for p in posts:
            if p.image is not None:
                p.features = by_key[p.image_key]

    def _timed_features(self, group: str, images: list) -> list:
        start = time.perf_counter()
        values = self._group_features(group, images)
        self.timings[group] += time.perf_counter() - start
        return values

    def _group_features(self, group: str, images: list) -> list:
        if group == "ocr":
            ocr = self.extractors["ocr"]
            texts = self.ocr_pool.read(images)
            return [ocr["clean"](t, ocr["vocabulary"], ocr["tokenize"]) for t in texts]
        if group == "attributes":
            words, _ = self.extractors["attributes"].predict(images)
            return [w.split()[:MAX_ATTRIBUTES] for w in words]
        if group == "vgg":
            grids = self.extractors["vgg"].extract(images)             # (N, 49, 512) float16, as the shards
            return [(torch.from_numpy(g), g.shape[0]) for g in grids]
        if group == "butd":
            extractor = self.extractors["butd"]
            boxes = extractor.rule.max_boxes
            out = []
            for result in extractor.extract(images):
                k = len(result["boxes"])
                padded = np.zeros((boxes, result["features"].shape[1]), np.float16)   # as the shards store them
                padded[:k] = result["features"]
                out.append((torch.from_numpy(padded), k))
            return out
        raise FeaturisationError(f"{group}: no extractor for this feature group")

    # ---------------------------------------------------------------------------------------------- tagging
    def tag(self, posts: Iterable, top: int | None = None) -> list[dict]:
        """Ranked keyphrases with scores for each post, in order (see the module docstring)."""
        prepared = [self.prepare(p, i) for i, p in enumerate(posts)]
        return self.tag_prepared(prepared, top)

    def tag_prepared(self, prepared: list[PreparedPost], top: int | None = None, progress=None) -> list[dict]:
        """Results for prepared posts, `batch_size` at a time: their image features, then the model.
        `progress(done)` is called after each batch."""
        results, answered = [], {}
        for start in range(0, len(prepared), self.batch_size):
            chunk = prepared[start:start + self.batch_size]
            self._features(chunk)
            results += self.rank(chunk, top, answered)
            if progress:
                progress(len(results))
        return results

    def rank(self, posts: list[PreparedPost], top: int | None = None, answered: dict | None = None) -> list[dict]:
        """The model on one batch of posts whose features are computed: ranked keyphrases with scores.
        Identical inputs are encoded and ranked once; `answered` (model input -> ranking) carries the
        rankings of earlier batches, so that a duplicate gets the same answer wherever it falls."""
        start, embedding_s = time.perf_counter(), self.timings[TEXT_EMBEDDING]
        answered = {} if answered is None else answered
        c = self.model.config
        top = top or c.n_best
        n_best = max(c.n_best, top)
        vision = c.vision if c.vision in self.groups else None
        keys, encoded = [], {}          # model input -> (Post, image features)
        for p in posts:
            ocr = p.ocr if p.ocr is not None else p.features.get("ocr", [])
            attributes = (p.attributes if p.attributes is not None else p.features.get("attributes", []))
            image = p.features.get(vision) if vision else None
            key = (tuple(p.tokens), tuple(ocr), tuple(attributes), p.image_key if image is not None else "")
            keys.append(key)
            if key not in answered and key not in encoded:
                encoded[key] = (Post(p.id, p.tokens, ocr, attributes[:MAX_ATTRIBUTES], [], image is not None, 0, 0),
                                image)
        if encoded:
            embeddings = self._embed([post for post, _ in encoded.values()])
            items = [(encode_post(post, i, self.model.vocabs, c), image,
                      embeddings[i] if embeddings is not None else None)
                     for i, (post, image) in enumerate(encoded.values())]
            batch = collate(items).to(self.device)
            per_model = [model_scores(model, candidates_batch(model, batch)) for model in self.models]
            for key, scores in zip(encoded, zip(*per_model)):
                answered[key] = (encoded[key][0], list(ensemble_scores(list(scores)).items())[:n_best])
        self.timings["model"] += time.perf_counter() - start - (self.timings[TEXT_EMBEDDING] - embedding_s)
        return [self._result(p, answered[key][0], answered[key][1][:top], vision) for p, key in zip(posts, keys)]

    def _embed(self, posts: list[Post]) -> torch.Tensor | None:
        """The posts' sentence embeddings [B, D], as `EmbedPosts` computes them, where the model reads them."""
        encoder = self.extractors.get(TEXT_EMBEDDING)
        if encoder is None:
            return None
        from pipeline.text_embedding import embedding_text

        start = time.perf_counter()
        appends_ocr = self.featurisation.groups[TEXT_EMBEDDING]["appends_ocr"]
        vectors = encoder([embedding_text(" ".join(p.tokens), " ".join(p.ocr) if appends_ocr else "")
                           for p in posts])
        self.timings[TEXT_EMBEDDING] += time.perf_counter() - start
        return torch.from_numpy(vectors)

    def _result(self, prepared: PreparedPost, post: Post, ranked: list, vision: str | None) -> dict:
        c = self.model.config
        modalities = ["text"] if c.use_text else []
        if c.image_wordings and post.ocr:
            modalities.append("ocr")
        if c.use_attributes and post.attributes:
            modalities.append("attributes")
        if vision and post.image_present:
            modalities.append("vision")
        result = {"id": prepared.id, "keyphrases": [{"text": kp, "score": round(float(s), 6)} for kp, s in ranked],
                  "modalities": modalities}
        if prepared.gold:
            result["gold"] = prepared.gold
        if prepared.image_rejected:
            result["image_rejected"] = {"reason": prepared.image_rejected[0], "detail": prepared.image_rejected[1]}
        return result


def score(results: Sequence[dict]) -> dict:
    """F1@1, F1@3, MAP@5 (percent) over the results that carry gold keyphrases, and how many did."""
    from model.metrics import compute_metrics

    scored = [r for r in results if r.get("gold")]
    if not scored:
        return {"posts": 0}
    metrics = compute_metrics([[k["text"] for k in r["keyphrases"]] or [""] for r in scored],
                              [r["gold"] for r in scored])
    return {"posts": len(scored), **{k: metrics[k] for k in ("f1@1", "f1@3", "map@5")}}
