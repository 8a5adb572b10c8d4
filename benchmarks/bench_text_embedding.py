"""The text embedding stage's cost: CPU seconds per 1,000 posts of the CMKP release (tokens + OCR tokens, as the
pipeline embeds them), ours (`pipeline.text_embedding.TextEncoder`: batches of posts of similar length) next to
the plain loop (batches in file order, each padded to its longest post), same model, same batch size, one run.

    .venv/bin/python benchmarks/bench_text_embedding.py --data ../shared/data/cmkp [--posts 1000] [--threads 1]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.sources.cmkp import parse_src_line
from pipeline.text_embedding import DEFAULT_MODEL, TextEncoder, embedding_text, pool


def release_texts(directory: Path, n: int) -> list[str]:
    src = (directory / "valid_src.txt").read_text(encoding="utf-8").splitlines()[:n]
    ocr_file = directory / "valid_ocr_final.txt"
    ocr = ocr_file.read_text(encoding="utf-8").splitlines()[:n] if ocr_file.is_file() else [""] * len(src)
    return [embedding_text(parse_src_line(line)[0], o) for line, o in zip(src, ocr)]


def plain_loop(encoder: TextEncoder, texts: list[str]) -> np.ndarray:
    out = []
    with torch.inference_mode():
        for start in range(0, len(texts), encoder.batch_size):
            batch = encoder.tokenizer(texts[start:start + encoder.batch_size], padding=True, truncation=True,
                                      max_length=encoder.max_length, return_tensors="pt")
            hidden = encoder.model(**batch).last_hidden_state
            out.append(pool(hidden, batch["attention_mask"], encoder.pooling).numpy())
    return np.concatenate(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/cmkp"))
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--posts", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    texts = release_texts(args.data, args.posts)
    encoder = TextEncoder(args.model, device="cpu", batch_size=args.batch_size)
    encoder(texts[:args.batch_size])                                    # warm-up
    timings = {}
    for name, run in (("plain loop (file order)", lambda: plain_loop(encoder, texts)),
                      ("ours (length-sorted batches)", lambda: encoder(texts))):
        cpu0, wall0 = time.process_time(), time.perf_counter()
        vectors = run()
        timings[name] = (time.process_time() - cpu0, time.perf_counter() - wall0, vectors)
    (base_cpu, base_wall, base), (ours_cpu, ours_wall, ours) = timings.values()
    cosine = (base * ours).sum(1)
    print(f"{len(texts)} posts, {encoder.info.name} ({encoder.pooling} pooling, {encoder.dim}-d), "
          f"{args.threads} thread(s), batch {args.batch_size}")
    for name, (cpu, wall, _) in timings.items():
        print(f"  {name:30s} {1000 * cpu / len(texts):7.2f} CPU-s / 1,000 posts  ({wall:.1f} s wall)")
    print(f"  ratio {base_cpu / ours_cpu:.2f}x; cosine between the two >= {cosine.min():.6f}")


if __name__ == "__main__":
    main()
