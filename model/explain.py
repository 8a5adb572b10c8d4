"""What each attention head of the fusion looked at (the paper's Figure 6).

For one post, the attention weights of every head of every M3H-Att block are read while the model encodes it
(forward hooks on the blocks, the model unchanged): the pooled text attending over the image regions (a 7 x 7
VGG grid or the BUTD boxes) and the image's and attributes' pooled vectors attending over the post's words.
`draw` puts each head's weights over the image (or its boxes) and over the words.

    cmkp-explain --model RUN --data DIR --split S --post ID --out FILE.png [--weights FILE.json]
"""
from __future__ import annotations

import json
import math
from functools import partial
from pathlib import Path

import click
import numpy as np
import torch

from durable.atomic import atomic_file
from model.data import PAD, PostDataset, collate, read_split, source_tokens
from model.model import KeyphraseModel, QueryBlock

DPI = 100
PANEL = (2.6, 2.6)      # inches per head and stack: a figure is 260 x heads by 260 x stacks pixels
IMAGE_SIDE = 224        # the image is drawn at the size VGG saw it


def block_attention(block: QueryBlock, query: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The softmax weights of a block's heads: query [B, H], memory [B, N, H], mask [B, N] -> [B, heads, N]
    (what scaled_dot_product_attention inside the block computes and applies to the values)."""
    B, N, _ = memory.shape
    q = block.q(query).view(B, block.heads, 1, block.head_dim)
    k = block.k(memory).view(B, N, block.heads, block.head_dim).transpose(1, 2)      # [B, h, N, dh]
    scores = (q @ k.transpose(-1, -2)).squeeze(2) / math.sqrt(block.head_dim)      # [B, h, N]
    return scores.masked_fill(~mask[:, None, :], float("-inf")).softmax(-1)


@torch.no_grad()
def explain(model: KeyphraseModel, dataset: PostDataset, index: int) -> dict:
    """The attention of every head of every fusion block for post `index` of the dataset:
    {"post_id", "tokens" (the source as the encoder read it), "attributes", "image_present", "vision",
     "attention": {"<query>-><memory>": [layer][head][position] weights, each head's summing to 1}}.
    Only pairs of modalities the post has are kept (the fusion drops the others' terms)."""
    model.eval()
    post = dataset.split.posts[index]
    batch = collate([dataset[index]])
    records: dict[str, dict[int, torch.Tensor]] = {}

    def record(key, layer, block, args, output):
        records.setdefault(key, {})[layer] = block_attention(block, *args)[0]

    hooks = [block.register_forward_hook(partial(record, key, layer))
             for key, stack in model.fusion.stacks.items() for layer, block in enumerate(stack)]
    try:
        model.encode(batch)
    finally:
        for hook in hooks:
            hook.remove()
    present = {"text": True, "attributes": bool((batch.attrs != PAD).any()),
               "vision": batch.vision_mask is not None and bool(batch.vision_mask.any()),
               "sentence": batch.text_embedding is not None and bool(batch.text_embedding.any())}
    attention = {key: [layers[i].tolist() for i in sorted(layers)] for key, layers in records.items()
                 if all(present[m] for m in key.split("->"))}
    return {"post_id": post.post_id, "tokens": source_tokens(post, model.config), "attributes": post.attributes,
            "keyphrases": post.keyphrases, "image_present": post.image_present, "vision": model.config.vision,
            "attention": attention}


def image_of(dataset: PostDataset, index: int, data_dir: str | Path):
    """(the post's stored image as an RGB PIL image or None, its BUTD boxes [n, 4] in pixels or None)."""
    import h5py
    from PIL import Image

    post = dataset.split.posts[index]
    with h5py.File(dataset.split.shard_paths[post.shard], "r") as f:
        relative = f["image_path"].asstr()[post.row] if "image_path" in f else ""
        boxes = None
        if "butd_boxes" in f:
            boxes = f["butd_boxes"][post.row][:int(f["butd_num_boxes"][post.row])]
    path = Path(data_dir, relative)
    if not (relative and path.is_file()):
        return None, boxes
    with Image.open(path) as image:
        return image.convert("RGB"), boxes


def draw(explanation: dict, path: str | Path, image=None, boxes=None, layer: int = -1) -> Path:
    """One row per attention stack, one panel per head: weights over the 7 x 7 grid drawn over the image (or
    over the BUTD boxes), or over the words. Writes PNG at PANEL x DPI per panel (a temporary name, renamed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stacks = explanation["attention"]
    if not stacks:
        raise ValueError(f"post {explanation['post_id']}: no attention block saw two of its modalities")
    heads = max(len(layers[layer]) for layers in stacks.values())
    fig, axes = plt.subplots(len(stacks), heads, squeeze=False, figsize=(PANEL[0] * heads, PANEL[1] * len(stacks)),
                             layout="constrained")
    for row, (key, layers) in enumerate(stacks.items()):
        weights = np.array(layers[layer])                                           # [heads, N]
        query, memory = key.split("->")
        for h in range(heads):
            ax = axes[row][h]
            ax.set_title(f"{query} → {memory}, head {h + 1}", fontsize=8)
            if h >= len(weights):
                ax.axis("off")
                continue
            if memory == "vision":
                _draw_regions(ax, weights[h], explanation["vision"], image, boxes)
            else:
                words = {"text": explanation["tokens"], "attributes": explanation["attributes"],
                         "sentence": ["(sentence embedding)"]}[memory]
                _draw_words(ax, weights[h][:len(words)], words)
    fig.suptitle(f"post {explanation['post_id']}: {' '.join(explanation['tokens'])[:120]}", fontsize=8)
    path = Path(path)
    with atomic_file(path) as f:
        fig.savefig(f, format="png", dpi=DPI, metadata={"Software": None})
    plt.close(fig)
    return path


def _draw_regions(ax, weights: np.ndarray, vision: str, image, boxes) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    if vision == "vgg":
        side = int(round(math.sqrt(len(weights))))
        grid = weights.reshape(side, side)
        if image is not None:
            ax.imshow(image.resize((IMAGE_SIDE, IMAGE_SIDE)), extent=(0, IMAGE_SIDE, IMAGE_SIDE, 0))
            ax.imshow(grid, cmap="jet", alpha=0.5, extent=(0, IMAGE_SIDE, IMAGE_SIDE, 0), interpolation="bilinear")
        else:
            ax.imshow(grid, cmap="viridis", vmin=0)
            for (i, j), v in np.ndenumerate(grid):
                ax.text(j, i, f"{100 * v:.0f}", ha="center", va="center", fontsize=5, color="white")
        return
    # BUTD: each box filled in proportion to its weight (boxes in the original image's pixels)
    if image is None or boxes is None:
        ax.bar(range(len(weights)), weights)
        ax.set_xlabel("object box")
        return
    from matplotlib.patches import Rectangle
    ax.imshow(image)
    top = weights.max() or 1.0
    for w, (x1, y1, x2, y2) in zip(weights, boxes):
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=True, color="red", alpha=0.6 * float(w / top)))


def _draw_words(ax, weights: np.ndarray, words: list[str]) -> None:
    ax.bar(range(len(words)), weights, color="tab:red")
    ax.set_ylim(0, max(float(weights.max()), 1e-6) * 1.1)
    ax.tick_params(axis="y", labelsize=6)
    ax.set_xticks(range(len(words)), words, rotation=90, fontsize=max(4, 8 - len(words) // 12))


def find_post(dataset: PostDataset, post_id: str) -> int:
    for i, post in enumerate(dataset.split.posts):
        if post.post_id == post_id:
            return i
    raise ValueError(f"no post {post_id!r} in split {dataset.split.name!r}")


def load_run(model_path: str | Path, device: str = "cpu") -> KeyphraseModel:
    """A run directory (its model.pt) or a checkpoint file."""
    from model.train import CHECKPOINT, load_checkpoint

    path = Path(model_path)
    return load_checkpoint(path / CHECKPOINT if path.is_dir() else path, device)


@click.command(help="Draw each attention head of a trained model over one post's image regions and words.")
@click.option("--model", "model_path", required=True, type=click.Path(exists=True),
              help="run directory (cmkp-train --out) or its model.pt")
@click.option("--data", "data_dir", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--split", default="test", show_default=True)
@click.option("--post", "post_id", required=True, help="the post's post_id")
@click.option("--out", "out_file", required=True, type=click.Path(dir_okay=False), help="PNG file")
@click.option("--weights", "weights_file", type=click.Path(dir_okay=False), default=None,
              help="also write the weights as JSON")
@click.option("--layer", type=int, default=-1, show_default=True, help="which stacked layer to draw")
def main(model_path, data_dir, split, post_id, out_file, weights_file, layer):
    try:
        model = load_run(model_path)
        dataset = PostDataset(read_split(data_dir, split), model.vocabs, model.config)
        index = find_post(dataset, post_id)
        explanation = explain(model, dataset, index)
        image, boxes = image_of(dataset, index, data_dir)
        Path(out_file).parent.mkdir(parents=True, exist_ok=True)
        draw(explanation, out_file, image, boxes, layer)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        raise click.ClickException(str(e)) from None
    if weights_file:
        Path(weights_file).write_text(json.dumps(explanation) + "\n")
    click.echo(f"post {post_id}: {', '.join(explanation['attention'])} -> {out_file}", err=True)


if __name__ == "__main__":
    main()
