"""Training CPU-seconds per epoch and decoding posts per second of a model configuration, one thread, next to
the authors' released code measured on the same protocol on this machine kind (150 CPU-s per stage-1
epoch on TRAIN, 17.8 posts/s decoding at beam 10 in batches of 64).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_model.py --data build/cmkp-bench

Training is timed over one full epoch of the train split (untrained model, the config's batch size), decoding
over the whole valid split (beam from the config, batches of 64; with the keyphrase memory's queries when
the config has it). CPU seconds (time.process_time) are the
primary figure: on a shared machine wall time also counts other people's work; both are printed.
"""
from __future__ import annotations

import argparse
import time

import torch

from model.beam import predict_batch
from model.config import DEFAULT_CONFIG, load_config
from model.data import PostDataset, Vocabularies, make_loader, read_split
from model.model import KeyphraseModel
from model.train import build_memory

AUTHORS_TRAIN_CPU_S_PER_EPOCH = 150.0
AUTHORS_DECODE_POSTS_PER_S = 17.8


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="build/cmkp-bench")
    ap.add_argument("--config", default=DEFAULT_CONFIG)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    config = load_config(args.config)
    train, valid = read_split(args.data, "train"), read_split(args.data, "valid")
    vocabs = Vocabularies.build(train, config)
    train_ds, valid_ds = PostDataset(train, vocabs, config), PostDataset(valid, vocabs, config)
    model = KeyphraseModel(config, vocabs)
    if config.aggregate:
        model.agg_weight.fill_(config.agg_weight)   # time the stage-2 model, the more expensive one
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)

    model.train()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for batch in make_loader(train_ds, config.batch_size, shuffle=True, seed=args.seed):
        loss = model(batch)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip)
        optimizer.step()
    train_cpu, train_wall = time.process_time() - cpu0, time.perf_counter() - wall0

    memory_cpu = 0.0
    if config.memory:           # built once per training run, queried in every decoding batch
        cpu0 = time.process_time()
        model.memory = build_memory(train_ds, vocabs)
        memory_cpu = time.process_time() - cpu0
    model.eval()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    with torch.no_grad():
        for batch in make_loader(valid_ds, 64, shuffle=False):
            predict_batch(model, batch)
    decode_cpu, decode_wall = time.process_time() - cpu0, time.perf_counter() - wall0
    n = len(valid_ds)

    print(f"config {config.name}, {args.threads} thread(s); train {len(train_ds)} posts, valid {n} posts, "
          f"beam {config.beam}")
    print(f"{'':34s}{'ours':>12s}{'authors':>12s}{'ratio':>10s}")
    print(f"{'training CPU-s / epoch':34s}{train_cpu:12.1f}{AUTHORS_TRAIN_CPU_S_PER_EPOCH:12.1f}"
          f"{AUTHORS_TRAIN_CPU_S_PER_EPOCH / train_cpu:9.2f}x   (wall {train_wall:.1f} s)")
    print(f"{'decoding posts / CPU-s':34s}{n / decode_cpu:12.1f}{AUTHORS_DECODE_POSTS_PER_S:12.1f}"
          f"{n / decode_cpu / AUTHORS_DECODE_POSTS_PER_S:9.2f}x   (wall {n / decode_wall:.1f} posts/s)")
    if config.memory:
        print(f"{'keyphrase memory build CPU-s':34s}{memory_cpu:12.2f}   (once per run, {len(train_ds)} posts)")


if __name__ == "__main__":
    main()
