"""A tiny trained run for the tagging tests: a twarc2 archive of 30 posts on three topics, each topic with its
own photo (scikit-image samples, small and slightly varied), built by BuildDataset with every feature group but
BUTD from seeded random weights (VGG, a ResNet-18 attribute predictor trained two epochs at 32 pixels; sentence
embeddings from the tiny random encoder of tests/conftest.py), then a tiny unified model trained on it with
`model.train.train`, a text-only one and one with the hybrid keyphrase memory (the default configuration)
beside it."""
from __future__ import annotations

import io
import json
from pathlib import Path

import luigi
import numpy as np
import skimage.data
from PIL import Image

from text_archive_fixture import tweet

TINY = dict(emb_dim=16, hidden=32, heads=2, head_dim=8, text_layers=1, dropout=0.0, emb_dropout=0.0, epochs=3,
            batch_size=8)
TOPICS = {  # hashtag -> (photo, words of its posts)
    "CoffeeTime": (skimage.data.coffee, ["morning", "cup", "brew", "cafe", "latte"]),
    "CatLife": (skimage.data.chelsea, ["kitty", "purr", "nap", "whiskers", "paws"]),
    "DeepSpace": (skimage.data.hubble_deep_field, ["stars", "galaxy", "night", "telescope", "cosmos"]),
}
FEATURES = ["ocr", "attributes", "vgg", "text_embedding"]
CONFIG = {
    "ExtractVGG": {"vgg_weights": "random:0", "vgg_precision": "fp32", "device": "cpu"},
    "TrainAttributePredictor": {"attribute_arch": "resnet18", "attribute_backbone_weights": "random:0",
                                "attribute_vocab_size": 30, "attribute_image_size": 32, "attribute_epochs": 2,
                                "attribute_batch_size": 8, "device": "cpu"},
    "PredictAttributes": {"device": "cpu"},
    "RunOCR": {"workers": "1"},
    "FilterHashtags": {"min_hashtag_count": "1"},
}


def photo_bytes(loader, variant: int, size=(96, 72)) -> bytes:
    """The topic's photo pasted at a variant's place over a variant's random colour blocks: the same picture
    in every variant, distinct bytes and dHashes (the pipeline drops near-duplicate images)."""
    rng = np.random.default_rng(variant)
    canvas = Image.fromarray(rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)).resize(
        size, Image.Resampling.NEAREST)
    photo = Image.fromarray(loader()).convert("RGB").resize((size[0] // 2, size[1] // 2), Image.Resampling.BILINEAR)
    canvas.paste(photo, ((variant * 7) % (size[0] // 2), (variant * 5) % (size[1] // 2)))
    buf = io.BytesIO()
    canvas.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def topic_posts(n_per_topic: int = 10, start_id: int = 100):
    """(tweet, media key, image bytes) triples: per topic, posts of its words with its hashtag trailing."""
    out, tid = [], start_id
    for tag, (loader, words) in TOPICS.items():
        for i in range(n_per_topic):
            text = f"Today {words[i % 5]} and {words[(i + 2) % 5]} with friends again {i} #{tag}"
            key = f"m{tid}"
            out.append((tweet(tid, text, [key]), key, photo_bytes(loader, i)))
            tid += 1
    return out


def write_topic_archive(directory: Path, posts) -> Path:
    (directory / "media").mkdir(parents=True, exist_ok=True)
    for _, key, data in posts:
        (directory / "media" / f"{key}.jpg").write_bytes(data)
    media = [{"media_key": key, "type": "photo", "url": f"https://pbs.example.invalid/media/{key}.jpg"}
             for _, key, _ in posts]
    page = {"data": [t for t, _, _ in posts], "includes": {"media": media, "users": []},
            "meta": {"result_count": len(posts)}}
    (directory / "page.jsonl").write_text(json.dumps(page) + "\n")
    return directory


class luigi_settings:
    """Context manager: the given luigi.cfg values set, and restored after."""

    def __init__(self, values: dict):
        self.values = values

    def __enter__(self):
        config = luigi.configuration.get_config()
        self.saved = {}
        for section, options in self.values.items():
            if not config.has_section(section):
                config.add_section(section)
            for key, value in options.items():
                self.saved[section, key] = config.get(section, key, None)
                config.set(section, key, str(value))

    def __exit__(self, *exc):
        config = luigi.configuration.get_config()
        for (section, key), value in self.saved.items():
            if value is None:
                config.remove_option(section, key)
            else:
                config.set(section, key, value)


def build_runs(root: Path, text_encoder: Path) -> dict[str, Path]:
    """The archive, its dataset and three runs (`image`: the unified model with VGG, OCR and attributes;
    `text`: the same model on the text alone; `hybrid`: the default configuration (the learned ranking), whose
    keyphrase memory also compares the posts' sentence embeddings from `text_encoder`, a model directory)."""
    from model.config import load_config
    from model.train import train
    from pipeline.tasks import BuildDataset

    archive = write_topic_archive(root / "archive", topic_posts())
    data = root / "data"
    with luigi_settings({**CONFIG, "EmbedPosts": {"text_embedding_model": str(text_encoder), "device": "cpu"}}):
        assert luigi.build([BuildDataset(source="archive", input=str(archive), output=str(data),
                                         features=FEATURES)], local_scheduler=True, workers=1)
    runs = {"image": root / "run-image", "text": root / "run-text", "hybrid": root / "run-hybrid"}
    configs = {"image": {"base": "gen-cls-m3h-att", **TINY},
               "text": {"base": "gen-cls-m3h-att", "vision": "none", "use_attributes": False,
                        "image_wordings": False, **TINY},
               "hybrid": {"base": "gen-cls-m3h-att-learned", **TINY}}
    for name, fields in configs.items():
        path = root / f"{name}.json"
        path.write_text(json.dumps(fields))
        train(load_config(str(path)), data, runs[name], seed=1, device="cpu", allow_random_features=True,
              log=lambda message: None, progress=False)
    return {"archive": archive, "data": data, "text_encoder": text_encoder, **runs}


def gray_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((40, 40), 128, np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()
