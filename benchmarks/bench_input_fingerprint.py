"""What checking an archive's files costs at a build's start (pipeline/inputs.py): the quick check against the
crawl stage's record (a stat per file, hashing none) vs the baseline of hashing every file (what the first
build, without a record, does), same files, one run.

    .venv/bin/python benchmarks/bench_input_fingerprint.py [--files 5000] [--kb 100]
"""
import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from pipeline.inputs import InputFiles
from pipeline.sources.archive import input_files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=5000, help="media files in the archive")
    parser.add_argument("--kb", type=int, default=100, help="size of each file (kB)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-input-"))
    try:
        (root / "media").mkdir()
        (root / "page.jsonl").write_text("{}\n")
        for i in range(args.files):
            (root / "media" / f"m{i}.jpg").write_bytes(os.urandom(args.kb * 1000))
        stage = root / "crawl"
        stage.mkdir()
        start = time.perf_counter()
        hashed = InputFiles(str(root), input_files(root), stage)
        hash_all = time.perf_counter() - start
        hashed.write(stage)
        start = time.perf_counter()
        InputFiles(str(root), input_files(root), stage)
        quick = time.perf_counter() - start
    finally:
        shutil.rmtree(root)
    print(f"{args.files} files of {args.kb} kB, listing included (page cache warm)")
    print(f"baseline, hash every file : {hash_all:7.3f} s")
    print(f"ours, quick check (stat)  : {quick:7.3f} s   ({hash_all / quick:.1f}x less)")


if __name__ == "__main__":
    main()
