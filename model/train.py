"""Training loop: train on `train`, select on `valid`, evaluate the best checkpoint on every other split.

Schedule (paper Eq. 12 and §3.4): Adam, learning rate halved when the validation loss stops falling, gradient
norm clipped; warm-up epochs with the classifier aggregation off (b = 0), then b = config.agg_weight (and, as
an option, the authors' stage 2 with encoder and classifier frozen). The best epoch on DEV is kept; training
stops after `patience` epochs without improvement.

    train() = load_data -> TrainingState.fresh (build_model, build_optimizer) or TrainingState.resume
              -> per epoch: Schedule.begin_epoch, train_epoch, validate, Schedule.end_epoch, checkpoints
              -> evaluate_best

After every epoch the run directory holds the best epoch's model (model.pt) and the full state of the last
finished epoch (training_state.pt: model, optimizer, scheduler, schedule, history, random-number states), so a
killed run resumed with `resume=True` ends exactly as an uninterrupted one.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from durable.atomic import atomic_file
from model import checkpoint, ranker
from model.beam import candidates_batch, ensemble_rank, label_candidates, model_scores, rank
from model.checkpoint import load_checkpoint, save_checkpoint
from model.config import ModelConfig
from model.data import PostDataset, Split, Vocabularies, check_text_embedding, make_loader, read_split, split_names
from model.distributed import ONE_PROCESS, Ranks, data_parallel, global_term_scale, sync_buffers
from model.memory import KeyphraseMemory
from model.metrics import HEADLINE, compute_metrics
from model.model import KeyphraseModel
from model.provenance import write_featurisation

__all__ = ["train", "load_checkpoint", "predict_split", "predict_ensemble", "check_one_configuration",
           "split_candidates", "rank_split", "score",
           "write_predictions", "resolve_device"]

CHECKPOINT = "model.pt"                   # the best epoch's model: what the final evaluation and cmkp-predict read
TRAINING_STATE = "training_state.pt"      # the last finished epoch's full state: what a resumed run continues
RUN_FILES = (CHECKPOINT, TRAINING_STATE, "metrics.json", "run.json", "train.log")   # and pred_<split>.txt
# (classifier, memory) weights of the unified ranking that DEV chooses from at every epoch (beam.rank)
RANK_WEIGHT_GRID = tuple((cls, mem) for cls in (0.0, 0.1, 0.2, 0.5) for mem in (0.0, 0.5, 1.0, 1.5, 2.0, 3.0))
# the hybrid memory's embedding weights w that DEV chooses from, once per run (memory.similarity)
MEMORY_EMBEDDING_GRID = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8)


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


# ------------------------------------------------------------------------------------------ data and model
@dataclass
class Data:
    splits: dict[str, Split]
    vocabs: Vocabularies
    datasets: dict[str, PostDataset]


def load_data(data_dir: Path, config: ModelConfig, allow_random_features: bool) -> Data:
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
    return Data(splits, vocabs, {name: PostDataset(split, vocabs, config) for name, split in splits.items()})


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
    if not c.memory_embedding:
        return KeyphraseMemory.build(train.examples, len(vocabs.words), c.memory_k, c.memory_power)
    return KeyphraseMemory.build(train.examples, len(vocabs.words), c.memory_k, c.memory_power,
                                 embeddings=train.text_embedding,
                                 embedding_provenance=train.split.text_embedding_provenance,
                                 embedding_weight=c.memory_embedding_weight)


@torch.no_grad()
def memory_candidates(memory: KeyphraseMemory, dataset: PostDataset, labels, n_best: int, device,
                      embedding_weight: float, gen_ranked: list | None = None, batch_size: int = 64) -> list:
    """The memory's labels [(kp, probability)] best first for every post of the dataset, with the hybrid
    similarity's weight `embedding_weight`; given the generator's hypotheses per post, those that are labels
    are scored too (as `candidates_batch` does)."""
    out: list = [None] * len(dataset)
    for batch in make_loader(dataset, batch_size, shuffle=False):
        batch = batch.to(device)
        p_mem = memory.label_distribution(batch.src, batch.attrs, len(labels), batch.text_embedding,
                                          embedding_weight)
        hyps = [gen_ranked[i] for i in batch.index.tolist()] if gen_ranked else [None] * len(batch.index)
        for i, ranked in zip(batch.index.tolist(), label_candidates(p_mem, labels, n_best, hyps)):
            out[i] = ranked
    return out


def select_memory_embedding_weight(config: ModelConfig, data: Data, device, log) -> ModelConfig:
    """The config with the hybrid memory's weight that maximises the memory's own F1@1 on DEV (ties: the
    smaller weight). It depends on the data alone, so it is chosen once, before training."""
    memory = build_memory(data.datasets["train"], data.vocabs).to(device)
    valid = data.datasets["valid"]
    tried = {}
    for w in MEMORY_EMBEDDING_GRID:
        mem = memory_candidates(memory, valid, data.vocabs.labels, config.n_best, device, w)
        tried[w] = score([rank((None, None, m), "unified", 0.0, 1.0, config.n_best) for m in mem],
                         data.splits["valid"])["f1@1"]
    best = max(tried, key=tried.get)
    log("memory embedding weight chosen on DEV (memory alone, F1@1): "
        + ", ".join(f"{w}: {f:.2f}" for w, f in tried.items()) + f" -> {best}")
    return dataclasses.replace(config, memory_embedding_weight=best)


def vision_dim_of(data: Data) -> int | None:
    train = data.datasets["train"]
    if train.vision is None or not data.splits["train"].posts:
        return None
    return train.vision.read(0, 0)[0].shape[1]


def build_model(config: ModelConfig, data: Data, device: torch.device, glove: str | None, log) -> KeyphraseModel:
    """A freshly initialised model, with the training split's memory and optionally GloVe embeddings."""
    train = data.splits["train"]
    text_embedding_dim = train.text_embedding.shape[1] if train.text_embedding is not None else None
    model = KeyphraseModel(config, data.vocabs, vision_dim_of(data), text_embedding_dim).to(device)
    if config.text_embedding_modality:
        model.sentence.provenance = train.text_embedding_provenance
    if config.memory:
        model.memory = build_memory(data.datasets["train"], data.vocabs).to(device)
    if glove:
        with torch.no_grad():
            found = load_glove(glove, data.vocabs.words.words, config.emb_dim, model.embedding.weight)
        log(f"glove: {found} of {len(data.vocabs.words)} words initialised from {glove}")
    return model


def build_optimizer(model: KeyphraseModel, config: ModelConfig):
    """Adam over the parameters that learn now, and the plateau schedule of its learning rate."""
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=config.lr,
                                 weight_decay=config.weight_decay)
    return optimizer, torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.5, patience=0)


# ------------------------------------------------------------------------------------------------ schedule
@dataclass
class Schedule:
    """What the next epoch does. Stage 1 (warm-up, b = 0) lasts `warmup_epochs`, or less when DEV stops
    improving for `patience` epochs; stage 2 (aggregation on) ends after `patience` epochs without improvement.
    A config without aggregation has stage 1 only, ended the same way."""
    epochs: int
    patience: int
    stage2_from: int | None         # the first epoch of stage 2; None: no stage 2
    stage: int = 1
    epoch: int = 0                  # the last finished epoch
    best: float = -math.inf         # the best DEV criterion so far and its epoch
    best_epoch: int = 0
    stale: int = 0                  # epochs since the best one (in the current stage)
    stopped: bool = False           # early stopping decided

    @classmethod
    def of(cls, config: ModelConfig) -> "Schedule":
        return cls(config.epochs, config.patience, config.warmup_epochs + 1 if config.aggregate else None)

    def begin_epoch(self) -> tuple[int, bool] | None:
        """(the next epoch, whether stage 2 starts with it), or None when training is over."""
        if self.stopped or self.epoch >= self.epochs:
            return None
        epoch = self.epoch + 1
        starts_stage2 = self.stage == 1 and self.stage2_from is not None and epoch >= self.stage2_from
        if starts_stage2:
            self.stage, self.stale = 2, 0
        return epoch, starts_stage2

    def end_epoch(self, criterion: float) -> bool:
        """Record the epoch's DEV criterion (higher is better); True when it is the best so far."""
        self.epoch += 1
        if criterion > self.best:
            self.best, self.best_epoch, self.stale = criterion, self.epoch, 0
            return True
        self.stale += 1
        if self.stale >= self.patience:
            if self.stage == 1 and self.stage2_from is not None:
                self.stage2_from = self.epoch + 1       # warm-up has converged: start stage 2 now
            else:
                self.stopped = True
        return False


def enter_stage2(model: KeyphraseModel, config: ModelConfig) -> None:
    """Aggregation on; with `freeze_classifier` (the authors' stage 2) only the decoder keeps learning."""
    model.agg_weight.fill_(config.agg_weight)
    if config.freeze_classifier:
        for name, p in model.named_parameters():
            p.requires_grad = name.startswith("decoder.")
            if not p.requires_grad:
                # the last stage-1 batch's gradient would stay forever (the new optimizer never clears it) and
                # count in every later clipping norm; a run resumed in stage 2 has none
                p.grad = None


# ----------------------------------------------------------------------------------------------- one epoch
class NonFiniteError(RuntimeError):
    pass


def train_epoch(model: KeyphraseModel, loader, optimizer, config: ModelConfig, device, epoch: int,
                progress: bool, ranks: Ranks = ONE_PROCESS, module=None) -> dict:
    """One pass over the training batches -> mean losses per post, CPU and wall seconds (and the batches
    skipped for a non-finite loss or gradient, when the config skips them). On several ranks `module` is the
    model's DistributedDataParallel wrapper and each batch is this rank's share of a global batch."""
    model.train()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    sums, n_posts, skipped = {}, 0, 0
    bar = tqdm(loader, desc=f"epoch {epoch}", disable=not progress, leave=False, unit="batch")
    for number, batch in enumerate(bar, 1):
        batch = batch.to(device)
        if ranks.world > 1:
            losses = module(batch, global_term_scale(model.loss_counts(batch), ranks))
        else:
            losses = model(batch)
        optimizer.zero_grad(set_to_none=True)
        fault = None
        finite = bool(torch.isfinite(losses["loss"]))
        if ranks.world > 1:         # every rank skips the step together, or none does
            finite = ranks.sum([float(not finite)])[0] == 0
        if not finite:
            fault = f"loss {losses['loss'].item()}"
        else:
            losses["loss"].backward()
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip)
            if not torch.isfinite(norm):
                fault = f"gradient norm {norm.item()}"
        if fault is not None:
            if config.on_nonfinite == "stop":
                raise NonFiniteError(
                    f"epoch {epoch}, batch {number}: non-finite {fault}; stopped before the optimizer step "
                    f"(the last finished epoch is kept in {TRAINING_STATE}). Lower the learning rate, check the "
                    f"data, or set on_nonfinite to 'skip' to skip such batches.")
            optimizer.zero_grad(set_to_none=True)
            skipped += 1
            continue
        optimizer.step()
        n_posts += len(batch.index)
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + v.item() * len(batch.index)
        bar.set_postfix(loss=f"{losses['loss'].item():.3f}",
                        posts_s=f"{n_posts / (time.perf_counter() - wall0):.0f}")
    if ranks.world > 1:
        names = sorted(sums)
        *totals, n_posts = ranks.sum([sums[k] for k in names] + [n_posts])
        sums = dict(zip(names, totals))
    record = {f"train_{k}": v / max(n_posts, 1) for k, v in sums.items()}
    if config.on_nonfinite == "skip":
        record["skipped_batches"] = skipped
    return {**record, "train_cpu_s": time.process_time() - cpu0, "train_wall_s": time.perf_counter() - wall0}


# ---------------------------------------------------------------------------------------------- validation
def check_embedded_as_trained(model: KeyphraseModel, provenance: dict | None, what: str) -> None:
    """Raise unless posts embedded by the encoder `provenance` records (model.data.text_embedding_provenance) are
    comparable with the training posts, for each part of the model that reads sentence embeddings."""
    if model.memory is not None and model.memory.embedding_weight:
        check_text_embedding(model.memory.embedding_provenance, provenance, what)
    if model.config.text_embedding_modality:
        check_text_embedding(model.sentence.provenance, provenance, what)


@torch.no_grad()
def split_candidates(model: KeyphraseModel, dataset: PostDataset, device, batch_size: int = 64,
                     ranks: Ranks = ONE_PROCESS) -> list:
    """Generator, classifier and memory candidates for every post of the dataset, in the split's order (on
    several ranks each decodes a share of the batches, and every rank gets them all)."""
    model.eval()
    check_embedded_as_trained(model, dataset.split.text_embedding_provenance, f"split {dataset.split.name!r}")
    out: list = [None] * len(dataset)
    decoded = []
    for number, batch in enumerate(make_loader(dataset, batch_size, shuffle=False)):
        if number % ranks.world != ranks.rank:
            continue
        batch = batch.to(device)
        decoded += zip(batch.index.tolist(), candidates_batch(model, batch))
    for i, cands in ranks.gather(decoded):
        out[i] = cands
    return out


def rank_split(model: KeyphraseModel, candidates: list, weights: dict | None = None) -> list[list[str]]:
    """Ranked keyphrases per post; `weights` (the ranking's RANKING_FIELDS) default to the config's."""
    c = dataclasses.replace(model.config, **(weights or {}))
    return [rank(cands, c.ranking, c.rank_cls_weight, c.rank_mem_weight, c.n_best, c.rank_feature_weights)
            for cands in candidates]


def predict_split(model: KeyphraseModel, dataset: PostDataset, device, batch_size: int = 64) -> list[list[str]]:
    """Ranked keyphrases for every post of the dataset, in the split's order."""
    return rank_split(model, split_candidates(model, dataset, device, batch_size))


# the ranking's weights, chosen on DEV at every epoch (select_rank_weight)
RANKING_FIELDS = {"unified": ("rank_cls_weight", "rank_mem_weight"), "learned": ("rank_feature_weights",)}
# config fields that DEV chooses per run: checkpoints of one configuration may differ in them
TUNED_FIELDS = (*RANKING_FIELDS["unified"], *RANKING_FIELDS["learned"], "memory_embedding_weight")


def check_one_configuration(models: list[KeyphraseModel], names: list[str]) -> None:
    """Ensemble members must be one configuration (seeds of it) trained on one training split."""
    first = {k: v for k, v in models[0].config.to_dict().items() if k not in TUNED_FIELDS}
    for model, name in zip(models[1:], names[1:]):
        config = {k: v for k, v in model.config.to_dict().items() if k not in TUNED_FIELDS}
        differ = sorted(k for k in first if first[k] != config.get(k))
        if differ:
            raise ValueError(f"{name} differs from {names[0]} in config fields {differ}: an ensemble averages "
                             f"seeds of one configuration")
        if model.vocabs.to_dict() != models[0].vocabs.to_dict():
            raise ValueError(f"{name} was trained on other data than {names[0]} (its vocabularies differ)")


def predict_ensemble(models: list[KeyphraseModel], dataset: PostDataset, device,
                     batch_size: int = 64) -> list[list[str]]:
    """Ranked keyphrases for every post: the mean of the models' ranking scores (beam.ensemble_rank), each
    model ranking with its own chosen weights. One model gives exactly that model's predictions."""
    per_model = [model_scores(model, split_candidates(model, dataset, device, batch_size)) for model in models]
    return [ensemble_rank(list(post), models[0].config.n_best) for post in zip(*per_model)]


def select_rank_weight(model: KeyphraseModel, candidates: list, split: Split) -> tuple[dict, dict]:
    """The ranking's weights (its RANKING_FIELDS) and the scores they give on `split`. When the config tunes
    them (DEV chooses them, as it chooses the checkpoint; re-ranking the same candidates costs no decoding): the
    unified ranking's (classifier, memory) weights of RANK_WEIGHT_GRID that maximise F1@1 on it (ties go to the
    first, the smaller weights); the learned ranking's fitted on it (ranker.fit)."""
    c = model.config
    if not (c.ranking in RANKING_FIELDS and c.tune_rank_weight):
        return {}, score(rank_split(model, candidates), split)
    if c.ranking == "learned":
        weights = {"rank_feature_weights": ranker.fit([f for *_, f in candidates],
                                                      [post.keyphrases for post in split.posts])}
        return weights, score(rank_split(model, candidates, weights), split)
    grid = RANK_WEIGHT_GRID
    if model.memory is None:
        grid = tuple(dict.fromkeys((cls, 0.0) for cls, _ in grid))
    tried = {weights: score(rank_split(model, candidates, dict(zip(RANKING_FIELDS["unified"], weights))), split)
             for weights in grid}
    best = max(tried, key=lambda w: tried[w]["f1@1"])
    return dict(zip(RANKING_FIELDS["unified"], best)), tried[best]


@torch.no_grad()
def validation_loss(model: KeyphraseModel, dataset: PostDataset, device, batch_size: int,
                    ranks: Ranks = ONE_PROCESS) -> float:
    model.eval()
    total, n = 0.0, 0
    for number, batch in enumerate(make_loader(dataset, batch_size, shuffle=False)):
        if number % ranks.world != ranks.rank:
            continue
        batch = batch.to(device)
        total += model(batch)["loss"].item() * len(batch.index)
        n += len(batch.index)
    if ranks.world > 1:
        total, n = ranks.sum([total, n])
    return total / max(n, 1)


@dataclass
class Validation:
    loss: float
    metrics: dict
    weights: dict                    # the ranking's weights the metrics used (RANKING_FIELDS; {}: the config's)
    decode_s: float


def validate(model: KeyphraseModel, data: Data, device, config: ModelConfig, ranks: Ranks = ONE_PROCESS) -> Validation:
    sync_buffers(model, ranks)
    loss = validation_loss(model, data.datasets["valid"], device, config.batch_size, ranks)
    t0 = time.perf_counter()
    candidates = split_candidates(model, data.datasets["valid"], device, config.batch_size, ranks)
    weights, metrics = select_rank_weight(model, candidates, data.splits["valid"])
    return Validation(loss, metrics, weights, time.perf_counter() - t0)


def score(predictions: list[list[str]], split: Split) -> dict:
    return compute_metrics([p or [""] for p in predictions], [post.keyphrases for post in split.posts])


def write_predictions(path: Path, predictions: list[list[str]]) -> None:
    with atomic_file(path, "w") as f:
        f.write("".join(";".join(kps) + "\n" for kps in predictions))


def write_json(path: Path, obj) -> None:
    with atomic_file(path, "w") as f:
        f.write(json.dumps(obj, indent=1))


# ---------------------------------------------------------------------------------------- training state
def training_loader(data: Data, config: ModelConfig, seed: int, ranks: Ranks):
    """The shuffled training batches; on several ranks, this rank's share of each global batch."""
    return make_loader(data.datasets["train"], config.batch_size, shuffle=True, seed=seed,
                       share=ranks.share if ranks.world > 1 else None)


def rng_states(loader) -> dict:
    """Every random-number stream training draws from, as plain values (loadable without pickle)."""
    name, key, pos, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(), "numpy": [name, key.tolist(), pos, has_gauss, gauss],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "shuffle": loader.batch_sampler.state_dict()}


def restore_rng_states(states: dict, loader) -> None:
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    name, key, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((name, np.array(key, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    loader.batch_sampler.load_state_dict(states["shuffle"])


@dataclass
class TrainingState:
    """Everything the next epoch depends on: saved after every epoch, restored to resume a killed run."""
    model: KeyphraseModel
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau
    loader: torch.utils.data.DataLoader
    schedule: Schedule
    history: list[dict]

    @classmethod
    def fresh(cls, config: ModelConfig, data: Data, seed: int, device, glove: str | None, log,
              ranks: Ranks = ONE_PROCESS) -> "TrainingState":
        model = build_model(config, data, device, glove, log)
        optimizer, scheduler = build_optimizer(model, config)
        loader = training_loader(data, config, seed, ranks)
        return cls(model, optimizer, scheduler, loader, Schedule.of(config), [])

    @classmethod
    def resume(cls, path: Path, config: ModelConfig, data: Data, seed: int, device,
               ranks: Ranks = ONE_PROCESS, log=print) -> "TrainingState":
        saved = checkpoint.load(path)
        if saved["seed"] != seed:
            raise ValueError(f"{path}: the run was trained with seed {saved['seed']}, not {seed}: cannot resume it")
        differ = sorted(k for k, v in config.to_dict().items() if saved["model"]["config"].get(k) != v)
        if differ:
            raise ValueError(f"{path}: the run was trained with other values of config fields {differ}: cannot "
                             f"resume it with this config")
        if saved["model"]["vocabs"] != data.vocabs.to_dict():
            raise ValueError(f"{path}: the run was trained on other data (its vocabularies differ): cannot resume")
        model = checkpoint.model_from_record(saved["model"], str(path), device)
        schedule = Schedule(**saved["schedule"])
        if schedule.stage == 2:
            enter_stage2(model, config)
        optimizer, scheduler = build_optimizer(model, config)
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        loader = training_loader(data, config, seed, ranks)
        # Each rank draws its own dropout masks: it continues from its own streams. A run resumed on another
        # number of ranks splits its batches otherwise anyway; its ranks take rank 0's streams.
        per_rank = saved.get("rank_rng") or [saved["rng"]]
        if len(per_rank) != ranks.world:
            log(f"{path}: trained on {len(per_rank)} rank(s), resumed on {ranks.world}: training continues, but "
                f"not as the uninterrupted run would have")
        restore_rng_states(per_rank[ranks.rank] if len(per_rank) == ranks.world else saved["rng"], loader)
        return cls(model, optimizer, scheduler, loader, schedule, saved["history"])

    def save(self, path: Path, seed: int, ranks: Ranks = ONE_PROCESS) -> None:
        """Rank 0 writes the state, with every rank's random-number streams (a collective: every rank calls it)."""
        per_rank = ranks.gather([rng_states(self.loader)])
        if not ranks.main:
            return
        checkpoint.save({"format": checkpoint.CHECKPOINT_FORMAT, "seed": seed,
                         "model": checkpoint.model_record(self.model), "optimizer": self.optimizer.state_dict(),
                         "scheduler": self.scheduler.state_dict(), "schedule": dataclasses.asdict(self.schedule),
                         "history": self.history, "rng": per_rank[0],
                         **({"rank_rng": per_rank} if ranks.world > 1 else {})}, path)


# ------------------------------------------------------------------------------------------ run directory
def clear_run_files(out_dir: Path, log) -> None:
    """A fresh run must not leave an older run's files beside its own, where they could pass for its results."""
    stale = [p for p in [*(out_dir / name for name in RUN_FILES), *sorted(out_dir.glob("pred_*.txt"))]
             if p.exists()]
    for path in stale:
        path.unlink()
    if stale:
        log(f"{out_dir}: removed an earlier run's " + ", ".join(p.name for p in stale))


def evaluate_best(out_dir: Path, data: Data, schedule: Schedule, seed: int, device, batch_size: int) -> tuple:
    """The best checkpoint's predictions and scores on every split but train; refuses a checkpoint this run
    did not write. -> (metrics per split, the checkpoint's config)."""
    path = out_dir / CHECKPOINT
    if schedule.best_epoch == 0:
        raise RuntimeError("no epoch gave a finite DEV criterion: there is no checkpoint to evaluate")
    saved = checkpoint.load(path, device)
    if (saved.get("epoch"), saved.get("seed")) != (schedule.best_epoch, seed):
        raise RuntimeError(f"{path} holds epoch {saved.get('epoch')} of seed {saved.get('seed')}, not this run's "
                           f"best epoch {schedule.best_epoch} of seed {seed}")
    model = checkpoint.model_from_record(saved, str(path), device).eval()
    metrics = {}
    for name, split in data.splits.items():
        if name == "train":
            continue
        predictions = predict_split(model, data.datasets[name], device, batch_size)
        write_predictions(out_dir / f"pred_{name}.txt", predictions)
        metrics[name] = score(predictions, split)
    return metrics, model.config


def code_revision(source: str | Path = __file__) -> dict:
    """The commit of the git checkout this code (`source`) runs from, and whether its tracked files differ from it,
    so a run says what made it; {"commit": None} for a copy that no checkout tracks: an installed one, or one
    exported into an ignored folder of some other checkout, whose HEAD says nothing of it."""
    here = Path(source).resolve()

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(here.parent), *args], capture_output=True, text=True,
                                  timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None or git("ls-files", "--error-unmatch", here.name) is None:
        return {"commit": None}
    return {"commit": commit.strip(), "modified": bool(git("status", "--porcelain", "--untracked-files=no"))}


def train(config: ModelConfig, data_dir: str | Path, out_dir: str | Path, seed: int = 1,
          device: str = "auto", glove: str | None = None, allow_random_features: bool = False,
          log=print, progress: bool = True, resume: bool = False) -> dict:
    """Train, select and evaluate; `resume` continues the run of `out_dir` from its last finished epoch (a run
    directory without one starts afresh). Returns the scores of every split but train. Launched by torchrun,
    it trains on every rank (model/distributed.py) and rank 0 alone writes the run directory."""
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device)
    if dev.type == "cuda" and "LOCAL_RANK" in os.environ:
        dev = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(dev)
    ranks = Ranks.from_environment(dev)
    if not ranks.main:
        log, progress = (lambda message: None), False
    set_seed(seed)
    data = load_data(data_dir, config, allow_random_features)
    if config.memory_embedding and config.tune_rank_weight:
        config = select_memory_embedding_weight(config, data, dev, log)
    state_path = out_dir / TRAINING_STATE
    if resume and state_path.exists():
        state = TrainingState.resume(state_path, config, data, seed, dev, ranks, log)
        log(f"resuming {out_dir} after epoch {state.schedule.epoch}")
    else:
        if resume:
            log(f"{out_dir} has no {TRAINING_STATE}: nothing to resume, starting afresh")
        if ranks.main:
            clear_run_files(out_dir, log)
        state = TrainingState.fresh(config, data, seed, dev, glove, log, ranks)
    model = state.model
    if ranks.main:
        # how new posts must be featurised to be tagged by this run (model/provenance.py)
        write_featurisation(data_dir, out_dir, config, data.splits["train"].shard_paths)
    module = data_parallel(model, ranks)
    log(f"config {config.name}: {sum(p.numel() for p in model.parameters()):,} parameters; vocab "
        f"{len(data.vocabs.words)} words, {len(data.vocabs.gen)} generator words, {len(data.vocabs.labels)} labels; "
        + ", ".join(f"{n} {len(s.posts)} posts" for n, s in data.splits.items()) + f"; device {dev}"
        + (f"; {ranks.world} ranks" if ranks.world > 1 else ""))

    while (step := state.schedule.begin_epoch()) is not None:
        epoch, starts_stage2 = step
        if starts_stage2:
            enter_stage2(model, config)
            log(f"stage 2 from epoch {epoch}: classifier aggregation on (b = {config.agg_weight})")
            if config.freeze_classifier:
                state.optimizer, state.scheduler = build_optimizer(model, config)
                module = data_parallel(model, ranks)
        fit = train_epoch(model, state.loader, state.optimizer, config, dev, epoch, progress, ranks, module)
        val = validate(model, data, dev, config, ranks)
        state.scheduler.step(val.loss)
        weights = val.weights
        record = {"epoch": epoch, "agg_weight": float(model.agg_weight), **weights,
                  **{k: v for k, v in fit.items() if not k.endswith("_s")},
                  "valid_loss": val.loss, **{f"valid_{k}": val.metrics[k] for k in HEADLINE},
                  "lr": state.optimizer.param_groups[0]["lr"], "train_cpu_s": fit["train_cpu_s"],
                  "train_wall_s": fit["train_wall_s"],
                  "decode_posts_per_s": len(data.splits["valid"].posts) / val.decode_s}
        state.history.append(record)
        if ranks.main:
            with atomic_file(out_dir / "train.log", "w") as f:
                f.write("".join(json.dumps(r) + "\n" for r in state.history))
        log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
        criterion = val.metrics["f1@1"] if config.select_on == "f1@1" else -val.loss
        if state.schedule.end_epoch(criterion) and ranks.main:
            save_checkpoint(model, out_dir / CHECKPOINT, {"epoch": epoch, "seed": seed},
                            config=dataclasses.replace(config, **weights))
        if state.schedule.stopped:
            log(f"early stop: no DEV improvement for {state.schedule.stale} epochs")
        state.save(state_path, seed, ranks)

    metrics = None
    if ranks.main:
        metrics, best_config = evaluate_best(out_dir, data, state.schedule, seed, dev, config.batch_size)
        write_json(out_dir / "run.json", {"config": best_config.to_dict(), "seed": seed, "code": code_revision(),
                                          "best_epoch": state.schedule.best_epoch, "history": state.history})
        write_json(out_dir / "metrics.json", metrics)
        log(f"best epoch {state.schedule.best_epoch}: " + "; ".join(
            f"{n} F1@1 {m['f1@1']:.2f} F1@3 {m['f1@3']:.2f} MAP@5 {m['map@5']:.2f}" for n, m in metrics.items()))
    metrics = ranks.broadcast(metrics)
    ranks.close()
    return metrics
