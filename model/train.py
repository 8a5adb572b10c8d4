"""Training loop: train on `train`, select on `valid`, evaluate the best checkpoint on every other split.

Schedule (paper Eq. 12 and §3.4): Adam, learning rate halved when the validation loss stops falling, gradient
norm clipped; warm-up epochs with the classifier aggregation off (b = 0), then b = config.agg_weight (and, as
an option, the authors' stage 2 with encoder and classifier frozen). The best epoch on DEV is kept; training
stops after `patience` epochs without improvement.
"""
from __future__ import annotations

import json
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from model.beam import candidates_batch, rank
from model.config import ModelConfig
from model.data import PostDataset, Split, Vocabularies, make_loader, read_split, split_names
from model.metrics import compute_metrics
from model.memory import KeyphraseMemory
from model.model import KeyphraseModel

CHECKPOINT = "model.pt"
# (classifier, memory) weights of the unified ranking that DEV chooses from at every epoch (beam.rank)
RANK_WEIGHT_GRID = tuple((cls, mem) for cls in (0.0, 0.1, 0.2, 0.5) for mem in (0.0, 0.5, 1.0, 1.5, 2.0, 3.0))


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but torch sees no CUDA device")
    return torch.device(name)


def load_glove(path: str | Path, words: list[str], dim: int, embedding: torch.Tensor) -> int:
    """Copy the vectors of a GloVe text file into `embedding` rows for the words it has; returns how many."""
    index = {w: i for i, w in enumerate(words)}
    found = vectors = 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            parts = line.rstrip().split(" ")
            if len(parts) != dim + 1:
                continue            # a header line or a vector of another size
            vectors += 1
            i = index.get(parts[0])
            if i is not None and i > 0:
                embedding[i] = torch.tensor([float(x) for x in parts[1:]])
                found += 1
    if not vectors:
        # Training on silently random embeddings would look like a GloVe run.
        raise ValueError(f"{path} holds no {dim}-d vectors (the config's emb_dim); is it a GloVe text file of "
                         f"that size?")
    return found


def build_memory(train: PostDataset, vocabs: Vocabularies) -> KeyphraseMemory:
    """The keyphrase memory of the training split, as its dataset's config defines it."""
    c = train.config
    return KeyphraseMemory.build(train.examples, len(vocabs.words), c.memory_k, c.memory_power)


def save_checkpoint(model: KeyphraseModel, path: Path, extra: dict) -> None:
    """Write to a temporary name, then rename: a checkpoint that exists is complete."""
    tmp = path.with_suffix(".tmp")
    torch.save({"config": model.config.to_dict(), "vocabs": model.vocabs.to_dict(),
                "agg_weight": model.agg_weight, "vision_dim": model.vision_dim,
                "state_dict": model.state_dict(),
                "memory": model.memory.state() if model.memory is not None else None, **extra}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> KeyphraseModel:
    ckpt = torch.load(path, map_location=device, weights_only=False)
    model = KeyphraseModel(ModelConfig(**ckpt["config"]), Vocabularies.from_dict(ckpt["vocabs"]),
                           vision_dim=ckpt["vision_dim"])
    model.load_state_dict(ckpt["state_dict"])
    model.agg_weight = ckpt["agg_weight"]
    if ckpt.get("memory") is not None:
        model.memory = KeyphraseMemory.from_state(ckpt["memory"]).to(device)
    return model.to(device).eval()


@torch.no_grad()
def split_candidates(model: KeyphraseModel, dataset: PostDataset, device, batch_size: int = 64) -> list:
    """Generator and classifier candidates for every post of the dataset, in the split's order."""
    model.eval()
    out: list = [None] * len(dataset)
    for batch in make_loader(dataset, batch_size, shuffle=False):
        batch = batch.to(device)
        for i, cands in zip(batch.index.tolist(), candidates_batch(model, batch)):
            out[i] = cands
    return out


def rank_split(model: KeyphraseModel, candidates: list) -> list[list[str]]:
    c = model.config
    return [rank(cands, c.ranking, c.rank_cls_weight, c.rank_mem_weight, c.n_best) for cands in candidates]


def predict_split(model: KeyphraseModel, dataset: PostDataset, device, batch_size: int = 64) -> list[list[str]]:
    """Ranked keyphrases for every post of the dataset, in the split's order."""
    return rank_split(model, split_candidates(model, dataset, device, batch_size))


def select_rank_weight(model: KeyphraseModel, candidates: list, split: Split) -> dict:
    """Scores on `split`; for the unified ranking, first set the classifier and memory weights that maximise
    F1@1 on it (DEV chooses them, as it chooses the checkpoint; re-ranking the same candidates costs no
    decoding). Ties go to the first in RANK_WEIGHT_GRID (the smaller weights)."""
    c = model.config
    if c.ranking == "unified" and c.tune_rank_weight:
        grid = RANK_WEIGHT_GRID
        if model.memory is None:
            grid = tuple(dict.fromkeys((cls, 0.0) for cls, _ in grid))
        tried = {}
        for c.rank_cls_weight, c.rank_mem_weight in grid:
            tried[c.rank_cls_weight, c.rank_mem_weight] = score(rank_split(model, candidates), split)
        c.rank_cls_weight, c.rank_mem_weight = max(tried, key=lambda w: tried[w]["f1@1"])
        return tried[c.rank_cls_weight, c.rank_mem_weight]
    return score(rank_split(model, candidates), split)


@torch.no_grad()
def validation_loss(model: KeyphraseModel, dataset: PostDataset, device, batch_size: int) -> float:
    model.eval()
    total, n = 0.0, 0
    for batch in make_loader(dataset, batch_size, shuffle=False):
        batch = batch.to(device)
        total += model(batch)["loss"].item() * len(batch.index)
        n += len(batch.index)
    return total / max(n, 1)


def score(predictions: list[list[str]], split: Split) -> dict:
    return compute_metrics([p or [""] for p in predictions], [post.keyphrases for post in split.posts])


def write_predictions(path: Path, predictions: list[list[str]]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(";".join(kps) + "\n" for kps in predictions), encoding="utf-8")
    os.replace(tmp, path)


def train(config: ModelConfig, data_dir: str | Path, out_dir: str | Path, seed: int = 1,
          device: str = "auto", glove: str | None = None, allow_random_features: bool = False,
          log=print, progress: bool = True) -> dict:
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device)
    set_seed(seed)
    names = split_names(data_dir)
    for required in ("train", "valid"):
        if required not in names:
            raise FileNotFoundError(f"{data_dir} has no {required!r} split (found: {names})")
    splits = {name: read_split(data_dir, name) for name in names}
    if config.vision != "none" and not allow_random_features:
        random_splits = [n for n, s in splits.items() if s.random_weights and config.vision in s.features]
        if random_splits:
            raise ValueError(
                f"the {config.vision!r} features of split(s) {random_splits} were computed with seeded RANDOM "
                f"image weights (shard attribute random_weights): they carry no image information, so results "
                f"would be meaningless. Rebuild the shards with real weights, or pass --allow-random-features "
                f"for a smoke test.")
    vocabs = Vocabularies.build(splits["train"], config)
    datasets = {name: PostDataset(split, vocabs, config) for name, split in splits.items()}
    vision_dim = None
    if datasets["train"].vision is not None:
        vision_dim = datasets["train"].vision.read(0, 0)[0].shape[1] if splits["train"].posts else None
    model = KeyphraseModel(config, vocabs, vision_dim=vision_dim).to(dev)
    if config.memory:
        model.memory = build_memory(datasets["train"], vocabs).to(dev)
    if glove:
        with torch.no_grad():
            found = load_glove(glove, vocabs.words.words, config.emb_dim, model.embedding.weight)
        log(f"glove: {found} of {len(vocabs.words)} words initialised from {glove}")
    log(f"config {config.name}: {sum(p.numel() for p in model.parameters()):,} parameters; vocab {len(vocabs.words)} "
        f"words, {len(vocabs.gen)} generator words, {len(vocabs.labels)} labels; "
        + ", ".join(f"{n} {len(s.posts)} posts" for n, s in splits.items()) + f"; device {dev}")

    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=config.lr,
                                 weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.5, patience=0)
    loader = make_loader(datasets["train"], config.batch_size, shuffle=True, seed=seed)
    ckpt_path = out_dir / CHECKPOINT
    best, best_epoch, stale, history = -math.inf, 0, 0, []
    log_file = open(out_dir / "train.log", "w", encoding="utf-8")
    stage2_epoch = config.warmup_epochs + 1 if config.aggregate else None
    for epoch in range(1, config.epochs + 1):
        if stage2_epoch is not None and epoch >= stage2_epoch and model.agg_weight == 0:
            model.agg_weight = config.agg_weight
            log(f"stage 2 from epoch {epoch}: classifier aggregation on (b = {config.agg_weight})")
            if config.freeze_classifier:    # the authors' stage 2: only the decoder keeps learning
                for name, p in model.named_parameters():
                    p.requires_grad = name.startswith("decoder.")
                optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=config.lr,
                                 weight_decay=config.weight_decay)
                scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.5, patience=0)
            stale = 0
        model.train()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        sums, n_posts = {}, 0
        bar = tqdm(loader, desc=f"epoch {epoch}", disable=not progress, leave=False, unit="batch")
        for batch in bar:
            batch = batch.to(dev)
            losses = model(batch)
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip)
            optimizer.step()
            n_posts += len(batch.index)
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v.item() * len(batch.index)
            bar.set_postfix(loss=f"{losses['loss'].item():.3f}",
                            posts_s=f"{n_posts / (time.perf_counter() - wall0):.0f}")
        train_cpu, train_wall = time.process_time() - cpu0, time.perf_counter() - wall0
        val_loss = validation_loss(model, datasets["valid"], dev, config.batch_size)
        scheduler.step(val_loss)
        t0 = time.perf_counter()
        val_metrics = select_rank_weight(model, split_candidates(model, datasets["valid"], dev, config.batch_size),
                                         splits["valid"])
        decode_s = time.perf_counter() - t0
        ranking_weights = {"rank_cls_weight": config.rank_cls_weight, "rank_mem_weight": config.rank_mem_weight}
        record = {"epoch": epoch, "agg_weight": model.agg_weight,
                  **(ranking_weights if config.ranking == "unified" else {}),
                  **{f"train_{k}": v / max(n_posts, 1) for k, v in sums.items()},
                  "valid_loss": val_loss, **{f"valid_{k}": val_metrics[k] for k in ("f1@1", "f1@3", "map@5")},
                  "lr": optimizer.param_groups[0]["lr"], "train_cpu_s": train_cpu, "train_wall_s": train_wall,
                  "decode_posts_per_s": len(splits["valid"].posts) / decode_s}
        history.append(record)
        log_file.write(json.dumps(record) + "\n")
        log_file.flush()
        log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
        criterion = val_metrics["f1@1"] if config.select_on == "f1@1" else -val_loss
        if criterion > best:
            best, best_epoch, stale = criterion, epoch, 0
            save_checkpoint(model, ckpt_path, {"epoch": epoch, "seed": seed})
        else:
            stale += 1
            if stage2_epoch is not None and model.agg_weight == 0:
                if stale >= config.patience:
                    stage2_epoch = epoch + 1        # warm-up has converged: start stage 2 now
            elif stale >= config.patience:
                log(f"early stop: no DEV improvement for {stale} epochs")
                break
    log_file.close()

    model = load_checkpoint(ckpt_path, dev)
    metrics = {}
    for name, split in splits.items():
        if name == "train":
            continue
        predictions = predict_split(model, datasets[name], dev, config.batch_size)
        write_predictions(out_dir / f"pred_{name}.txt", predictions)
        metrics[name] = score(predictions, split)
    summary = {"config": config.to_dict(), "seed": seed, "best_epoch": best_epoch, "history": history}
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    (out_dir / "run.json").write_text(json.dumps(summary, indent=1))
    log(f"best epoch {best_epoch}: " + "; ".join(
        f"{n} F1@1 {m['f1@1']:.2f} F1@3 {m['f1@3']:.2f} MAP@5 {m['map@5']:.2f}" for n, m in metrics.items()))
    return metrics
