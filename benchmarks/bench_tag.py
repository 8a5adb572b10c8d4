"""What tagging new posts costs: each stage alone, per post, next to `TagPosts` end to end, in one run.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_tag.py --model build/sample-run \\
        --corpus build/sample-src [--posts 64] [--device cpu] [--workers 2]

The first `--posts` photo posts of the sample corpus (`data/make_sample_corpus.py` output, read from its archive
files and `media/`) are written as a `posts` JSONL file. Stages alone, in this process, after one
`Tagger.load`: loading (the run's checks, weights and tokenizer), text (tokenizer), decode (the image checks,
one decode per image), then each feature group the run reads (OCR in its process pool, attributes, VGG, BUTD),
then the model (encoding, beam search, ranking). `TagPosts` end to end runs in a fresh process
(`luigi --module pipeline.tasks TagPosts --source posts ... --local-scheduler`), so it pays the scheduler, the
crawl stage, the load and every stage again: the ratio is its wall time over the sum of the stages' (load
included). Then the in-process API's CPU time for one text-only post, after loading (median of 20 calls).
Wall seconds throughout (OCR runs in other processes); on a shared machine figures vary from run to run.
"""
import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from model.tagging import Tagger


def corpus_posts(corpus: Path, n: int) -> list[dict]:
    """The first n posts of the corpus's archive that have an archived photo, as posts rows."""
    from pipeline.report import StageLog
    from pipeline.sources.archive import read_archive

    rows = []
    for record in read_archive(corpus, StageLog("crawl")):
        files = [m["file"] for m in record["media"] if m["type"] == "photo" and m["file"]]
        if files:
            rows.append({"id": record["id"], "text": record["text"], "image": files[0]})
        if len(rows) == n:
            break
    return rows


def timed(function):
    start = time.perf_counter()
    out = function()
    return out, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="run directory (cmkp-train --out)")
    parser.add_argument("--corpus", type=Path, default=Path("build/sample-src"))
    parser.add_argument("--posts", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=0, help="OCR processes (0: all cores)")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    rows = corpus_posts(args.corpus, args.posts)
    n = len(rows)
    tagger, load_s = timed(lambda: Tagger.load(args.model, device=args.device, batch_size=args.batch_size,
                                               ocr_workers=args.workers))
    stages = {"load": load_s}
    with tagger:
        prepared = [tagger.prepare(r, i) for i, r in enumerate(rows)]
        stages["text"], stages["decode"] = tagger.timings["text"], tagger.timings["decode"]
        images = {p.image_key: p.image for p in prepared if p.image is not None}
        for group in ("ocr", "attributes", "vgg", "butd"):
            if group in tagger.groups:
                _, stages[group] = timed(lambda group=group: [tagger._group_features(group, list(images.values())[i:i + args.batch_size])
                                                  for i in range(0, len(images), args.batch_size)])
        for start in range(0, n, args.batch_size):          # the features, for the model stage alone
            tagger._features(prepared[start:start + args.batch_size])
        _, stages["model"] = timed(lambda: [tagger.rank(prepared[i:i + args.batch_size])
                                            for i in range(0, n, args.batch_size)])
        cpu = []
        for _ in range(20):
            start = time.process_time()
            tagger.tag(["sunday morning with friends and a good book, what a day"])
            cpu.append(time.process_time() - start)
        config, groups = tagger.model.config.name, tagger.groups

    with tempfile.TemporaryDirectory() as tmp:
        posts = Path(tmp, "posts.jsonl")
        posts.write_text("".join(json.dumps(r) + "\n" for r in rows))
        command = [str(Path(sys.executable).with_name("luigi")), "--module", "pipeline.tasks", "TagPosts",
                   "--model", str(args.model), "--source", "posts", "--input", str(posts), "--output",
                   str(Path(tmp, "out")), "--device", args.device, "--ocr-workers", str(args.workers),
                   "--batch-size", str(args.batch_size), "--local-scheduler"]
        _, end_to_end = timed(lambda: subprocess.run(command, check=True, capture_output=True))
        report = json.loads(Path(tmp, "out", "report.json").read_text())
    if report["tagged"] != n:
        raise RuntimeError(f"TagPosts tagged {report['tagged']} of {n} posts")

    total = sum(stages.values())
    print(f"{args.model} ({config}, reads {', '.join(groups) or 'text only'}); {n} photo posts of {args.corpus}; "
          f"{len(images)} distinct images; device {args.device}\n")
    print("| stage | seconds | ms per post |\n|---|---:|---:|")
    for stage, seconds in stages.items():
        print(f"| {stage} | {seconds:.2f} | {1000 * seconds / n:.1f} |")
    for group in ("ocr", "attributes", "vgg", "butd"):
        if group not in groups:
            print(f"| {group} | not read by this model | |")
    print(f"| **sum of the stages alone** | {total:.2f} | {1000 * total / n:.1f} |")
    print(f"| **TagPosts end to end** (fresh process, scheduler, crawl) | {end_to_end:.2f} | "
          f"{1000 * end_to_end / n:.1f} |")
    print(f"\nend to end / sum of stages: {end_to_end / total:.2f}x (target <= 1.15x)")
    print(f"API, one text-only post after loading: {1000 * statistics.median(cpu):.1f} ms CPU "
          f"(median of {len(cpu)}; target < 50 ms)")


if __name__ == "__main__":
    main()
