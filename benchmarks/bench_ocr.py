"""OCR speed and word accuracy on the sample corpus's rendered-text images: ours (tesserocr, binarised passes,
one process per core with OMP_THREAD_LIMIT=1) vs the baseline "pytesseract with default settings, one process",
same images, one run.

    .venv/bin/python data/make_sample_corpus.py --out build/sample-src
    .venv/bin/python benchmarks/bench_ocr.py --corpus build/sample-src [--images 40] [--workers 0]
Also prints the share of all the corpus's decodable images with any OCR text (ours), the figure the paper
gives as about 35% raw.
"""
import argparse
import json
import os
import time
from pathlib import Path

from PIL import Image

from pipeline import ocr


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--corpus", default="build/sample-src")
    parser.add_argument("--images", type=int, default=40, help="rendered-text images to time (0: all)")
    parser.add_argument("--workers", type=int, default=0, help="0: all cores")
    args = parser.parse_args()
    expected = json.loads(Path(args.corpus, "expected.json").read_text())
    images = [im for post in expected["posts"].values() for im in post["images"]]
    rendered = [(str(Path(args.corpus, im["file"])), im["rendered_text"], im["kind"])
                for im in images if im["rendered_text"]]
    rendered.sort(key=lambda r: r[0])
    if args.images:
        # Keep the corpus's mix of plain and outlined text in the timed subset.
        step = max(1, len(rendered) // args.images)
        rendered = rendered[::step][:args.images]
    paths = [p for p, _, _ in rendered]

    import pytesseract
    env = os.environ.pop("OMP_THREAD_LIMIT", None)   # the baseline runs with Tesseract's default threading
    start = time.perf_counter()
    baseline = [pytesseract.image_to_string(Image.open(p)) for p in paths]
    baseline_s = time.perf_counter() - start
    if env is not None:
        os.environ["OMP_THREAD_LIMIT"] = env

    start = time.perf_counter()
    ours = [reading.text for reading in ocr.read_images(paths, workers=args.workers)]
    ours_s = time.perf_counter() - start

    def accuracy(texts, kind=None):
        scores = [ocr.word_accuracy(want, got) for (_, want, k), got in zip(rendered, texts) if kind in (None, k)]
        return sum(scores) / max(1, len(scores)), len(scores)

    workers = args.workers or os.cpu_count()
    print(f"rendered-text images: {len(paths)} from {args.corpus} (workers={workers}, process start included)")
    print(f"baseline pytesseract default, 1 process: {len(paths) / baseline_s:7.2f} images/s")
    print(f"ours tesserocr 2-3 passes, {workers} processes : {len(paths) / ours_s:7.2f} images/s")
    print(f"speed ratio ours/baseline: {baseline_s / ours_s:.2f}x (target >= 4x)")
    for kind in (None, "ocr_text", "ocr_outline"):
        (b, n), (o, _) = accuracy(baseline, kind), accuracy(ours, kind)
        print(f"word accuracy {kind or 'all':12s} (n={n:3d}): baseline {b:.3f}  ours {o:.3f} (target >= 0.95)")
    bad = [(w, t) for (_, w, _), t in zip(rendered, ours) if ocr.word_accuracy(w, t) < 1]
    for want, got in bad[:5]:
        print(f"  missed: {want!r} -> {got!r}")


if __name__ == "__main__":
    main()
