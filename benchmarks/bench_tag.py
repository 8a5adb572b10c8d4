"""What tagging new posts costs: each stage alone, per post, next to `TagPosts` end to end, in one run.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_tag.py --model build/sample-run \\
        --corpus build/sample-src [--posts 256] [--device cpu] [--workers 2]

The first `--posts` photo posts of the sample corpus (`data/make_sample_corpus.py` output, read from its archive
files and `media/`) are written as a `posts` JSONL file. Stages alone, in this process, after one
`Tagger.load`: loading (the run's checks, weights and tokenizer), text (tokenizer), decode (the image checks,
one decode per image), then each feature group the run reads (OCR in its process pool, attributes, VGG, BUTD,
the sentence encoder), then the model (encoding, beam search, ranking). Imports alone: a fresh interpreter
importing what the `luigi` command imports before it loads a run (luigi, torch, the pipeline's task
modules, the tagger's).

`TagPosts` end to end runs in a fresh process, as `luigi --module pipeline.tasks TagPosts --source posts ...
--local-scheduler` does (`luigi.build` of the same task), so it pays the interpreter, the imports, the scheduler,
the crawl stage, the load and every stage again. That process times its imports (the `luigi` command's, then
`model.tagging`'s, which the first task would import) and each task's own run time (Luigi's PROCESSING_TIME
event), so the benchmark prints where its time went: the ratio is its
wall time over the sum of the stages alone (load included), and again with the imports counted as a stage.
Then the in-process API's CPU time for one text-only post, after loading (median of 20 calls).
Wall seconds, and beside them CPU seconds (user + system: this process's threads and its OCR workers', read from
/proc, so Linux; end to end and the imports: the finished child processes'), which vary less on a shared machine,
where wall figures vary from run to run, and which no overlap of the stages lowers.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from model.data import MAX_ATTRIBUTES, Post
from model.tagging import Tagger

IMAGE_GROUPS = ("ocr", "attributes", "vgg", "butd")

# Run in a fresh interpreter: TagPosts through luigi.build, as the `luigi` command runs it, timing its parts.
END_TO_END = """
import json, sys, time
launched = float(sys.argv[1])
import luigi
import pipeline.tasks
imported = time.time()
import model.tagging  # what TagCrawl would import first (torch, the model's modules): timed apart, paid once either way
tagging_imported = time.time()
tasks = {}
@luigi.Task.event_handler(luigi.Event.PROCESSING_TIME)
def record(task, seconds):
    tasks[task.task_family] = tasks.get(task.task_family, 0.0) + seconds
params = json.loads(sys.argv[2])
ok = luigi.build([pipeline.tasks.TagPosts(**params)], local_scheduler=True, workers=1, log_level="WARNING")
done = time.time()
json.dump({"ok": ok, "imports": imported - launched, "tagging_imports": tagging_imported - imported, "tasks": tasks,
           "wall": done - launched}, open(sys.argv[3], "w"))
"""
IMPORTS = "import luigi, torch, pipeline.tasks, model.tagging"


def corpus_posts(corpus: Path, n: int) -> list[dict]:
    """The first n posts of the corpus's archive that have an archived photo, as posts rows."""
    from pipeline.report import StageLog
    from pipeline.sources.archive import read_archive

    rows = []
    for record in read_archive(corpus, StageLog("crawl")):
        files = [m["file"] for m in record["media"] if m["type"] == "photo" and m["file"]]
        if files:
            # absolute: the posts source reads a relative path against the posts file's directory
            rows.append({"id": record["id"], "text": record["text"], "image": str(Path(files[0]).resolve())})
        if len(rows) == n:
            break
    return rows


def timed(function):
    start = time.perf_counter()
    out = function()
    return out, time.perf_counter() - start


def cpu_now(tagger=None) -> float:
    """CPU seconds (user + system, all threads) this process has used, plus, given a tagger, its OCR worker
    processes' and their finished children's (read from /proc: the workers live as long as the tagger)."""
    seconds = time.process_time()
    for worker in tagger.ocr_pool.workers.workers if tagger is not None and tagger.ocr_pool else []:
        fields = Path(f"/proc/{worker.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        # utime, stime, and the cutime, cstime of what it ran and waited for (a tesseract process)
        seconds += sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    return seconds


def children_cpu() -> float:
    """CPU seconds of the finished child processes (and theirs) so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def fresh_process_imports() -> tuple[float, float]:
    """Wall and CPU seconds of a fresh interpreter importing what the `luigi` command imports before loading a
    run."""
    cpu = children_cpu()
    _, seconds = timed(lambda: subprocess.run([sys.executable, "-c", IMPORTS], check=True))
    return seconds, children_cpu() - cpu


def stages_alone(args, rows: list[dict]) -> tuple[dict, dict]:
    """(wall, CPU) seconds of each stage measured alone in this process, and what the run reads."""
    n = len(rows)
    cpu = time.process_time()
    tagger, load_s = timed(lambda: Tagger.load(args.model, device=args.device, batch_size=args.batch_size,
                                               ocr_workers=args.workers))
    stages = {"load": (load_s, cpu_now(tagger) - cpu)}

    def measure(function) -> float:
        before = cpu_now(tagger)
        function()
        return cpu_now(tagger) - before

    with tagger:
        prepared = []
        text_cpu = measure(lambda: prepared.extend(tagger.prepare(r, i) for i, r in enumerate(rows)))
        stages["text"], stages["decode"] = (tagger.timings["text"], text_cpu), (tagger.timings["decode"], None)
        images = list({p.image_key: p.image for p in prepared if p.image is not None}.values())
        for group in IMAGE_GROUPS:
            if group in tagger.groups:
                before = cpu_now(tagger)
                _, wall = timed(lambda group=group: [tagger._group_features(group, images[i:i + args.batch_size])
                                                     for i in range(0, len(images), args.batch_size)])
                stages[group] = (wall, cpu_now(tagger) - before)
        for start in range(0, n, args.batch_size):          # the features, for the stages that read them
            tagger._features(prepared[start:start + args.batch_size])
        embedding_cpu = 0.0
        if "text_embedding" in tagger.groups:
            posts = [Post(p.id, p.tokens, p.features.get("ocr", []), p.features.get("attributes", [])[:MAX_ATTRIBUTES],
                          [], True, 0, 0) for p in prepared]
            before = tagger.timings["text_embedding"]
            embedding_cpu = measure(lambda: [tagger._embed(posts[i:i + args.batch_size])
                                             for i in range(0, n, args.batch_size)])
            stages["text_embedding"] = (tagger.timings["text_embedding"] - before, embedding_cpu)
        before = tagger.timings["model"]
        model_cpu = measure(lambda: [tagger.rank(prepared[i:i + args.batch_size])
                                     for i in range(0, n, args.batch_size)])
        # the embeddings it computes again are not counted (their CPU: as measured just above)
        stages["model"] = (tagger.timings["model"] - before, model_cpu - embedding_cpu)
        cpu = []
        for _ in range(20):
            start = time.process_time()
            tagger.tag(["sunday morning with friends and a good book, what a day"])
            cpu.append(time.process_time() - start)
        about = {"config": tagger.model.config.name, "groups": tagger.groups, "images": len(images),
                 "images_rejected": sum(p.image is None for p in prepared),
                 "api_cpu_ms": 1000 * statistics.median(cpu), "api_calls": len(cpu)}
    return stages, about


def end_to_end(args, rows: list[dict], images_rejected: int) -> dict:
    """TagPosts in a fresh process; it must tag every post and reject exactly the images the stages alone did
    (the sample corpus holds a few bad images on purpose; an image path it cannot read would reject them all)."""
    with tempfile.TemporaryDirectory() as tmp:
        posts = Path(tmp, "posts.jsonl")
        posts.write_text("".join(json.dumps(r) + "\n" for r in rows))
        params = {"model": str(args.model), "source": "posts", "input": str(posts), "output": str(Path(tmp, "out")),
                  "device": args.device, "ocr_workers": args.workers, "batch_size": args.batch_size}
        timings = Path(tmp, "timings.json")
        cpu = children_cpu()
        subprocess.run([sys.executable, "-c", END_TO_END, repr(time.time()), json.dumps(params), str(timings)],
                       check=True)
        out = {**json.loads(timings.read_text()), "cpu": children_cpu() - cpu}    # its OCR workers included
        report = json.loads(Path(tmp, "out", "report.json").read_text())
    if not out["ok"] or report["tagged"] != len(rows) or sum(report["images_rejected"].values()) != images_rejected:
        raise RuntimeError(f"TagPosts tagged {report['tagged']} of {len(rows)} posts, images rejected: "
                           f"{report['images_rejected']} (the stages alone rejected {images_rejected})")
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="run directory (cmkp-train --out)")
    parser.add_argument("--corpus", type=Path, default=Path("build/sample-src"))
    parser.add_argument("--posts", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=0, help="OCR processes (0: all cores)")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    rows = corpus_posts(args.corpus, args.posts)
    n = len(rows)
    stages, about = stages_alone(args, rows)
    imports = fresh_process_imports()
    e2e = end_to_end(args, rows, about["images_rejected"])

    total = sum(wall for wall, _ in stages.values())
    total_cpu = sum(cpu or 0.0 for _, cpu in stages.values())
    print(f"{args.model} ({about['config']}, reads {', '.join(about['groups']) or 'text only'}); {n} photo posts of "
          f"{args.corpus}; {about['images']} distinct images ({about['images_rejected']} posts' images rejected, tagged "
          f"from their text); device {args.device}\n")
    print("| stage (alone) | seconds | ms per post | CPU seconds |\n|---|---:|---:|---:|")
    for stage, (seconds, cpu) in stages.items():
        print(f"| {stage} | {seconds:.2f} | {1000 * seconds / n:.1f} | "
              + (f"{cpu:.2f} |" if cpu is not None else "with text |"))
    for group in IMAGE_GROUPS + ("text_embedding",):
        if group not in about["groups"]:
            print(f"| {group} | not read by this model | | |")
    print(f"| **sum of the stages alone** | {total:.2f} | {1000 * total / n:.1f} | {total_cpu:.2f} |")
    print(f"| imports alone (a fresh `{IMPORTS}`) | {imports[0]:.2f} | {1000 * imports[0] / n:.1f} | "
          f"{imports[1]:.2f} |")
    print(f"| **TagPosts end to end** (fresh process) | {e2e['wall']:.2f} | {1000 * e2e['wall'] / n:.1f} | "
          f"{e2e['cpu']:.2f} |")
    print("\nwhere the end to end run's time went:\n\n| part | seconds |\n|---|---:|")
    print(f"| interpreter start, `import luigi, pipeline.tasks` | {e2e['imports']:.2f} |")
    print(f"| `import model.tagging` (torch, the model's modules, nltk for metrics) | {e2e['tagging_imports']:.2f} |")
    for family, seconds in sorted(e2e["tasks"].items(), key=lambda item: -item[1]):
        print(f"| {family}.run | {seconds:.2f} |")
    rest = e2e["wall"] - e2e["imports"] - e2e["tagging_imports"] - sum(e2e["tasks"].values())
    print(f"| scheduler, completeness checks, locks and identity records | {rest:.2f} |")
    work = e2e["tasks"].get("TagCrawl", 0.0) + e2e["tasks"].get("TagShard", 0.0)
    fresh = e2e["imports"] + e2e["tagging_imports"]
    print(f"\nthe fresh process's imports: {fresh:.2f} s ({100 * fresh / e2e['wall']:.1f}% of the end to end wall); "
          f"outside them, TagCrawl (the load, the crawl) and TagShard (every stage): "
          f"{e2e['wall'] - fresh - work:.2f} s")
    print(f"end to end / sum of stages: {e2e['wall'] / total:.2f}x (target <= 1.15x); counting the fresh process's "
          f"imports as a stage: {e2e['wall'] / (total + imports[0]):.2f}x")
    print(f"CPU seconds, end to end / sum of stages: {e2e['cpu'] / total_cpu:.2f}x; counting the imports as a stage: "
          f"{e2e['cpu'] / (total_cpu + imports[1]):.2f}x")
    print(f"API, one text-only post after loading: {about['api_cpu_ms']:.1f} ms CPU (median of {about['api_calls']}; "
          f"target < 50 ms)")


if __name__ == "__main__":
    main()
