"""VGG-16 conv5 grids: 7 x 7 x 512 -> (49, 512) region vectors per image, as the paper's image input.

torchvision's `vgg16` with `VGG16_Weights.IMAGENET1K_V1` through the weights API (pipeline/weights.py: torch
cache or local file); seeded random weights (`random[:SEED]`, tests and the demo) are its convolutional layers
alone, initialised as torchvision initialises them, without the classifier a grid never reads. Preprocessing:
the authors resize the whole image to 224 x 224 with LANCZOS (no crop) and normalise with the ImageNet mean/std;
`resize="lanczos"` does that with the mean/std taken from the weights' own transforms, `resize="weights"` uses
the weights' transforms as they are (resize the short side to 256, centre-crop 224 -- loses the image borders).

Speed: batched, `torch.inference_mode`, channels-last; precision from pipeline/precision.py (`auto`: bf16 autocast
on a CPU with native bf16, its agreement with fp32 measured by benchmarks/bench_vgg.py (README); fp32 on other CPUs;
half precision on GPU). `image_size` below 224 (the demo's) shrinks conv5 below 7 x 7; the avgpool then
repeats its positions, so the grid keeps its (49, 512) shape.
"""
from __future__ import annotations

from dataclasses import dataclass, asdict
from typing import Sequence

import numpy as np
from PIL import Image

GRID = 7          # conv5 after avgpool: 7 x 7 positions
CHANNELS = 512
SIZE = 224


@dataclass
class VGGConfig:
    weights: str = "IMAGENET1K_V1"   # enum entry, local file, or random[:SEED]
    resize: str = "lanczos"           # lanczos (authors: whole image to 224x224) | weights (resize 256, crop 224)
    image_size: int = SIZE            # lanczos: the side the whole image is resized to (the authors': 224)
    precision: str = "auto"           # auto (pipeline/precision.py) | fp32 | bf16 | fp16
    batch_size: int = 16
    device: str = "auto"


def random_features(seed: int):
    """VGG-16's convolutional layers (conv1..conv5 + pool5) with torchvision's VGG initialisation, seeded, and
    their WeightsInfo. Not the numbers of `vgg16(weights=None)`'s layers, which come after its 123M classifier
    weights in the random stream: drawing those took most of the time of building a random extractor."""
    import torch
    import torchvision
    from torchvision.models import vgg

    from pipeline.weights import WeightsInfo

    torch.manual_seed(seed)
    features = vgg.make_layers(vgg.cfgs["D"])
    for module in features.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            torch.nn.init.constant_(module.bias, 0)
    enum = torchvision.models.VGG16_Weights
    meta = {"architecture": "vgg16", "reference_weights": str(enum.DEFAULT),
            "transforms": repr(enum.DEFAULT.transforms()),
            "init": "convolutional layers only, torchvision's VGG initialisation"}
    return features, WeightsInfo(f"random(seed={seed})", "", True, meta)


class VGGGridExtractor:
    def __init__(self, config: VGGConfig, weights_place: str | None = None):
        """`weights_place`: where the file `config.weights` names lies instead (the tagger's `locate vgg=PATH`);
        the provenance names `config.weights` all the same."""
        import torch
        import torchvision

        from pipeline.precision import resolve_precision
        from pipeline.weights import load_torchvision_model, pick_device, random_seed

        if config.resize == "weights" and config.image_size != SIZE:
            raise ValueError(f"resize=weights crops to {SIZE}; image_size applies to resize=lanczos only")
        self.config = config
        self.device = pick_device(config.device)
        self.precision = resolve_precision(config.precision, self.device)
        enum = torchvision.models.VGG16_Weights
        seed = random_seed(config.weights)
        if seed is None:
            model, self.weights = load_torchvision_model(torchvision.models.vgg16, enum, config.weights, "VGG-16",
                                                         place=weights_place)
            features = model.features
        else:
            features, self.weights = random_features(seed)
        # features (conv1..conv5 + pool5) and avgpool; the classifier is not needed for grids.
        self.net = torch.nn.Sequential(features, torch.nn.AdaptiveAvgPool2d((GRID, GRID))).eval()
        self.net = self.net.to(self.device, memory_format=torch.channels_last)
        if self.precision.name == "fp16":
            self.net = self.net.half()
        self.weights_transform = enum.DEFAULT.transforms()
        self.mean = torch.tensor(self.weights_transform.mean).view(3, 1, 1)
        self.std = torch.tensor(self.weights_transform.std).view(3, 1, 1)

    def preprocess(self, image: Image.Image):
        """One RGB PIL image -> normalised float32 tensor (3, S, S), S = image_size (224 for resize=weights)."""
        import torch

        image = image.convert("RGB")
        if self.config.resize == "weights":
            return self.weights_transform(image)
        if self.config.resize != "lanczos":
            raise ValueError(f"resize must be lanczos or weights, not {self.config.resize!r}")
        size = (self.config.image_size, self.config.image_size)
        array = np.asarray(image.resize(size, Image.LANCZOS), dtype=np.float32) / 255.0
        return (torch.from_numpy(array).permute(2, 0, 1) - self.mean) / self.std

    def extract(self, images: Sequence[Image.Image]) -> np.ndarray:
        """RGB images -> grids (N, 49, 512) float16, row-major over the 7 x 7 positions."""
        import torch

        out = np.zeros((len(images), GRID * GRID, CHANNELS), dtype=np.float16)
        for start in range(0, len(images), self.config.batch_size):
            batch = torch.stack([self.preprocess(im) for im in images[start:start + self.config.batch_size]])
            out[start:start + len(batch)] = self.forward(batch)
        return out

    def forward(self, batch) -> np.ndarray:
        """Normalised (B, 3, S, S) -> (B, 49, 512) float16."""
        import torch

        batch = batch.to(self.device, memory_format=torch.channels_last)
        with torch.inference_mode():
            if self.precision.name == "fp16":
                grid = self.net(batch.half())
            else:
                with self.precision.autocast(self.device.type):
                    grid = self.net(batch)
        # (B, 512, 7, 7) -> (B, 7, 7, 512) -> (B, 49, 512)
        grid = grid.float().permute(0, 2, 3, 1).reshape(len(batch), GRID * GRID, CHANNELS)
        return grid.cpu().numpy().astype(np.float16)

    def provenance(self) -> dict:
        """Shard attributes of the `vgg` group (docs/FORMAT.md)."""
        info = self.weights
        meta = {**info.meta, **asdict(self.config), **self.precision.provenance(), "device": self.device.type,
                "grid": [GRID, GRID, CHANNELS], "normalize_mean": list(self.weights_transform.mean),
                "normalize_std": list(self.weights_transform.std)}
        return type(info)(info.name, info.sha256, info.random, meta).attrs("vgg")
