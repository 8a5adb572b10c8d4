"""Image attributes: a ResNet-152 multi-label predictor over a vocabulary of caption nouns and adjectives.

The paper's attributes come from a ResNet-152 trained on COCO captions to predict the ~1k most frequent caption
words; each post gets its top-5. Here:
  * vocabulary: the `vocab_size` most frequent nouns and adjectives of the captions (COCO captions JSON:
    `images` [{id, file_name}], `annotations` [{image_id, caption}]), tagged in context by an averaged-perceptron
    POS tagger that ships its model in its PyPI package (denckring-en-pos, trained on UD English-EWT; works
    offline, 93% UPOS accuracy by its own test-split figure);
  * labels: an image is positive for a word when one of its captions uses the word as a noun or adjective;
  * model: torchvision `resnet152` (weights API: ImageNet backbone from the torch cache / a local file, or
    seeded random) with its `fc` replaced by a Linear(2048 -> vocabulary) head, trained with BCE;
  * prediction: sigmoid scores, top-5 words and their scores.
A trained predictor is one checkpoint file: {state_dict, vocabulary, arch, image_size, backbone provenance}.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, asdict
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from pipeline.images import open_rgb

TOP_K = 5
TAGGED_CLASSES = ("NOUN", "ADJ")
ARCHITECTURES = {"resnet152": "ResNet152_Weights", "resnet50": "ResNet50_Weights", "resnet18": "ResNet18_Weights"}


# ---- captions -> vocabulary and labels -------------------------------------------------------------

def read_captions(path: str | Path) -> dict[str, list[str]]:
    """COCO captions JSON -> {image file name: [captions]} (images without captions are left out)."""
    data = json.loads(Path(path).read_text())
    names = {image["id"]: image["file_name"] for image in data["images"]}
    captions: dict[str, list[str]] = {}
    for annotation in data["annotations"]:
        if annotation["image_id"] not in names:
            raise ValueError(f"{path}: caption for unknown image id {annotation['image_id']}")
        captions.setdefault(names[annotation["image_id"]], []).append(annotation["caption"])
    return captions


def pos_tagger() -> Callable[[list[str]], list[str]]:
    """Words of one sentence -> universal POS tags (offline averaged perceptron)."""
    from denckring_en_pos import tagger

    model = tagger()
    return lambda words: [label.partition("|")[0] for label in model.tag(words)]


def tagged_words(caption: str, tag: Callable[[list[str]], list[str]]) -> set[str]:
    """The caption's lowercase words that it uses as nouns or adjectives."""
    words = re.findall(r"[a-z]+", caption.lower())
    return {w for w, t in zip(words, tag(words)) if t in TAGGED_CLASSES and len(w) > 1}


def build_vocabulary(captions: dict[str, list[str]], size: int, tag) -> tuple[list[str], dict[str, set[str]]]:
    """(the `size` most frequent caption nouns/adjectives, ties alphabetical; each image's words)."""
    per_image = {name: set().union(*(tagged_words(c, tag) for c in caps)) for name, caps in captions.items()}
    counts = Counter(w for words in per_image.values() for w in words)
    vocabulary = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:size]]
    if len(vocabulary) < TOP_K:
        raise ValueError(f"attribute vocabulary has {len(vocabulary)} words; at least {TOP_K} are needed")
    return vocabulary, per_image


# ---- the predictor ---------------------------------------------------------------------------------

@dataclass
class AttributeConfig:
    arch: str = "resnet152"
    backbone_weights: str = "IMAGENET1K_V1"  # enum entry, local file, or random[:SEED]
    vocab_size: int = 1000
    image_size: int = 224
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-4
    seed: int = 0


def build_model(arch: str, backbone_weights: str, num_words: int):
    """ResNet with a fresh multi-label head. Returns (model, backbone WeightsInfo)."""
    import torch
    import torchvision

    from pipeline.weights import load_torchvision_model

    if arch not in ARCHITECTURES:
        raise ValueError(f"arch must be one of {sorted(ARCHITECTURES)}, not {arch!r}")
    enum = getattr(torchvision.models, ARCHITECTURES[arch])
    model, info = load_torchvision_model(getattr(torchvision.models, arch), enum, backbone_weights,
                                         f"attribute predictor backbone ({arch})")
    model.fc = torch.nn.Linear(model.fc.in_features, num_words)
    return model, info


def to_tensor(image: Image.Image, size: int):
    """RGB image -> ImageNet-normalised float32 (3, size, size), whole image resized (no crop)."""
    import torch

    array = np.asarray(image.convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.float32) / 255.0
    tensor = torch.from_numpy(array).permute(2, 0, 1)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    return (tensor - mean) / std


def train(config: AttributeConfig, captions_path: str | Path, image_dir: str | Path, out_path: str | Path,
          device: str = "auto", progress: Callable[[int, int, float], None] | None = None) -> dict:
    """Train the predictor from a COCO captions JSON and its images; write the checkpoint to `out_path`.

    Returns a summary (vocabulary size, images, per-epoch mean loss). `progress(epoch, epochs, loss)`.
    """
    import torch

    from pipeline.weights import pick_device

    torch.manual_seed(config.seed)
    captions = read_captions(captions_path)
    vocabulary, per_image = build_vocabulary(captions, config.vocab_size, pos_tagger())
    index = {w: i for i, w in enumerate(vocabulary)}
    names = sorted(per_image)
    missing = [n for n in names if not Path(image_dir, n).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} captioned images are missing from {image_dir}, e.g. {missing[:3]}")
    images = torch.stack([to_tensor(open_rgb(Path(image_dir, n)), config.image_size) for n in names])
    targets = torch.zeros(len(names), len(vocabulary))
    for row, name in enumerate(names):
        for word in per_image[name] & index.keys():
            targets[row, index[word]] = 1.0

    dev = pick_device(device)
    model, backbone = build_model(config.arch, config.backbone_weights, len(vocabulary))
    model = model.to(dev, memory_format=torch.channels_last).train()
    optimiser = torch.optim.Adam(model.parameters(), lr=config.lr)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    generator = torch.Generator().manual_seed(config.seed)
    losses = []
    for epoch in range(config.epochs):
        order = torch.randperm(len(names), generator=generator)
        total = 0.0
        for start in range(0, len(names), config.batch_size):
            rows = order[start:start + config.batch_size]
            if len(rows) < 2 and start:       # BatchNorm cannot train on a single-image batch
                continue
            batch = images[rows].to(dev, memory_format=torch.channels_last)
            loss = loss_fn(model(batch), targets[rows].to(dev))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += loss.item() * len(rows)
        losses.append(total / len(names))
        if progress:
            progress(epoch + 1, config.epochs, losses[-1])
    summary = {"vocabulary_size": len(vocabulary), "images": len(names), "captions": sum(map(len, captions.values())),
               "epoch_losses": losses}
    torch.save({"state_dict": model.cpu().state_dict(), "vocabulary": vocabulary, "config": asdict(config),
                "backbone_weights": backbone.name, "backbone_weights_sha256": backbone.sha256,
                "backbone_random": backbone.random, "captions": str(captions_path), "summary": summary}, out_path)
    return summary


class AttributePredictor:
    """A trained checkpoint -> top-5 attribute words and scores per image."""

    def __init__(self, checkpoint: str | Path, device: str = "auto", batch_size: int = 16, precision: str = "auto"):
        import torch
        import torchvision

        from pipeline.precision import resolve_precision
        from pipeline.shards import sha256_file
        from pipeline.weights import build_loaded, pick_device, require_file

        path = require_file(checkpoint, "attribute predictor",
                            "Train one with the TrainAttributePredictor task (a COCO captions JSON and its images).")
        state = torch.load(path, map_location="cpu", weights_only=True)
        self.vocabulary: list[str] = state["vocabulary"]
        self.config = AttributeConfig(**state["config"])
        self.device = pick_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.batch_size = batch_size

        def architecture():
            model = getattr(torchvision.models, self.config.arch)(weights=None)
            model.fc = torch.nn.Linear(model.fc.in_features, len(self.vocabulary))
            return model

        model = build_loaded(architecture, state["state_dict"])
        self.model = model.eval().to(self.device, memory_format=torch.channels_last)
        if self.precision.name == "fp16":
            self.model = self.model.half()
        self.provenance_attrs = {
            "attributes_weights": str(path.resolve()), "attributes_weights_sha256": sha256_file(path),
            "attributes_meta": json.dumps({
                "arch": self.config.arch, "vocabulary_size": len(self.vocabulary), "image_size": self.config.image_size,
                "backbone_weights": state["backbone_weights"], "backbone_weights_sha256":
                state["backbone_weights_sha256"], "captions": state["captions"], "train": state["summary"],
                "top_k": TOP_K, "pos_tagger": "denckring-en-pos (averaged perceptron, UD English-EWT)",
                **self.precision.provenance()}, sort_keys=True)}
        self.random = bool(state["backbone_random"])

    def predict(self, images: Sequence[Image.Image]) -> tuple[list[str], np.ndarray]:
        """Images -> (top-5 words joined by spaces per image, scores (N, 5) float32)."""
        import torch

        words, scores = [], np.zeros((len(images), TOP_K), dtype=np.float32)
        for start in range(0, len(images), self.batch_size):
            batch = torch.stack([to_tensor(im, self.config.image_size) for im in images[start:start + self.batch_size]])
            batch = batch.to(self.device, memory_format=torch.channels_last)
            with torch.inference_mode():
                if self.precision.name == "fp16":
                    logits = self.model(batch.half()).float()
                else:
                    with self.precision.autocast(self.device.type):
                        logits = self.model(batch).float()
            top = torch.sigmoid(logits).topk(TOP_K, dim=1)
            for row, (values, indices) in enumerate(zip(top.values.cpu(), top.indices.cpu())):
                words.append(" ".join(self.vocabulary[i] for i in indices.tolist()))
                scores[start + row] = values.numpy()
        return words, scores


# ---- a small captioned set (tests and the bundled demo) --------------------------------------------

# scikit-image's bundled photos (shipped in its wheel, offline) with captions written for this project.
SAMPLE_CAPTIONS = {
    "astronaut": ["a smiling astronaut in an orange suit in front of a flag",
                  "a female astronaut poses with a white helmet and a space shuttle"],
    "chelsea": ["a ginger cat with green eyes looks at the camera",
                "an orange tabby cat sitting on a wooden floor"],
    "coffee": ["a white cup of hot coffee on a saucer",
               "a red coffee cup with a spoon on a wooden table"],
    "rocket": ["a tall white rocket on a launch pad under a blue sky",
               "a space rocket stands on the launch tower"],
    "hubble_deep_field": ["a dark sky full of distant bright galaxies",
                          "colorful galaxies and stars in deep space"],
    "motorcycle": ["a red motorcycle parked in a small garage",
                   "a shiny motorcycle with a black seat next to a wall"],
    "immunohistochemistry": ["a purple and brown tissue sample under a microscope",
                             "stained cells in a colorful tissue slide"],
    "colorwheel": ["a round colorful wheel with bright colors",
                   "a circular rainbow color wheel on a white background"],
}


def write_sample_captioned_set(directory: str | Path, copies: int = 1) -> Path:
    """Write SAMPLE_CAPTIONS' photos (JPEG; `copies` flipped/rotated variants each) and a COCO captions JSON.

    Returns the JSON's path; its images lie beside it in `images/`.
    """
    import skimage.data

    directory = Path(directory)
    (directory / "images").mkdir(parents=True, exist_ok=True)
    loaders = {"motorcycle": lambda: skimage.data.stereo_motorcycle()[0]}
    images, annotations = [], []
    for name, captions in SAMPLE_CAPTIONS.items():
        photo = Image.fromarray(loaders.get(name, getattr(skimage.data, name, None))()).convert("RGB")
        photo.thumbnail((320, 320))
        for copy in range(copies):
            variant = photo.transpose(Image.FLIP_LEFT_RIGHT) if copy % 2 else photo
            variant = variant.rotate(10 * (copy // 2), expand=False)
            file_name = f"{name}-{copy}.jpg"
            variant.save(directory / "images" / file_name, quality=90)
            image_id = len(images) + 1
            images.append({"id": image_id, "file_name": file_name, "width": variant.width, "height": variant.height})
            annotations += [{"id": len(annotations) + 1, "image_id": image_id, "caption": c} for c in captions]
    path = directory / "captions.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations}, indent=1))
    return path
