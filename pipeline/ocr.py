"""Image wordings: Tesseract OCR of post images, then the paper's cleaning as the authors' code does it.

Reading: tesserocr (its wheel bundles Tesseract; pointed at the system tessdata) in a process pool with one
OpenMP thread per worker, because Tesseract's own OpenMP threading costs more than it gains on small images.
Two passes per image: the image as it is, and -- only when the image has enough near-white pixels -- a
binarised copy where light pixels become black on white, which is how light text with a dark outline over a
photo (meme captions) becomes readable; plain Tesseract reads almost nothing there. The pass with more
confident words wins.

Failures: each image's reading has a deadline (`OCR_TIMEOUT`, Tesseract's own cooperative timeout: layout
analysis can overrun it by a few seconds); an image that reaches it keeps what the passes before read (often
nothing). The deadline is also enforced from outside: a worker still busy `KILL_GRACE` seconds after it (a
Tesseract that never returns) is killed and replaced, and its image gets no text. Either way the image counts
as timed out (`Reading.timed_out`, logged), and the shard goes on. A worker process that dies otherwise (a
segfault in Tesseract, the OOM killer) makes `read_images` raise `OCRWorkerDied` at once instead of waiting for
it: the shard fails, nothing is written, a rerun redoes it.

Cleaning (as the authors' ext_feats/infer_OCR/process_ocr.py does it):
tokenize like the posts (ekphrasis, lowercased), keep alphabetic tokens longer than one character that occur
in the corpus's posts or keyphrases, then drop the whole OCR text when it is empty, when at least 75% of its
tokens are shorter than 3 characters, or when fewer than 3 tokens are longer than 3 characters. The ratios are
taken over the kept tokens.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import time
from collections import Counter, deque
from dataclasses import dataclass
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple, Sequence

import numpy as np
from PIL import Image

from pipeline.images import open_rgb

TESSDATA = os.environ.get("TESSDATA_PREFIX", "/usr/share/tesseract-ocr/5/tessdata")
LIGHT_THRESHOLD = 240        # grey level at and above which a pixel may be light text
DARK_THRESHOLD = 80          # grey level at and below which a pixel may be dark text
MIN_TEXT_SHARE = 0.002       # below this share of candidate pixels a binarised pass is skipped
MIN_GLYPH_AREA = 8           # light blobs smaller than this (pixels) are noise
MAX_GLYPH_SHARE = 0.25       # light blobs taller or wider than this share of the image are not glyphs
CONFIDENT = 70               # Tesseract word confidence (0-100) counted as a confidently read word
OCR_TIMEOUT = 60.0           # seconds of Tesseract per image, all passes together
KILL_GRACE = 10.0            # seconds a worker may run past an image's deadline before it is killed

log = logging.getLogger(__name__)


class OCRWorkerDied(RuntimeError):
    pass


class Reading(NamedTuple):
    text: str                # raw OCR text ("" where nothing was read)
    timed_out: bool          # the deadline stopped the reading (cooperatively, or by killing its worker)


@dataclass(frozen=True)
class OCRResult:
    text: str                # raw text of the chosen pass, whitespace-normalised
    confident_words: int
    binarised: bool          # a binarised pass won
    timed_out: bool = False  # the deadline stopped the reading (text: what earlier passes read)


def glyphs_binarised(grey: np.ndarray, text_pixels: np.ndarray) -> Image.Image | None:
    """Glyph-sized blobs of `text_pixels` -> black on white (None when there are hardly any such pixels).

    Blobs larger than a glyph (a white cup, the sky, a dark coat) are dropped: left in, they become black slabs
    that break Tesseract's line finding.
    """
    from scipy import ndimage

    if text_pixels.mean() < MIN_TEXT_SHARE:
        return None
    labels, count = ndimage.label(text_pixels)
    height, width = grey.shape
    areas = ndimage.sum_labels(text_pixels, labels, index=np.arange(1, count + 1))
    keep = np.zeros(count + 1, dtype=bool)
    for index, (box, area) in enumerate(zip(ndimage.find_objects(labels), areas), start=1):
        box_height, box_width = box[0].stop - box[0].start, box[1].stop - box[1].start
        keep[index] = (area >= MIN_GLYPH_AREA and box_height <= MAX_GLYPH_SHARE * height
                       and box_width <= MAX_GLYPH_SHARE * width)
    return Image.fromarray(np.where(keep[labels], 0, 255).astype(np.uint8))


def language_data(tessdata: str, lang: str) -> None:
    if not Path(tessdata, f"{lang}.traineddata").is_file():
        raise FileNotFoundError(
            f"Tesseract language data {lang}.traineddata not found in {tessdata}; "
            f"install it with `apt-get install tesseract-ocr` or set TESSDATA_PREFIX")


class TesseractReader:
    """One tesserocr API (one per process: it is not thread-safe)."""

    def __init__(self, tessdata: str = TESSDATA, lang: str = "eng", timeout: float = OCR_TIMEOUT):
        import tesserocr

        language_data(tessdata, lang)
        self.api = tesserocr.PyTessBaseAPI(path=tessdata, lang=lang)
        # Tesseract 5 re-reads low-confidence lines inverted; the binarised passes cover light text instead.
        self.api.SetVariable("tessedit_do_invert", "0")
        self.timeout = timeout

    def _pass(self, image: Image.Image, deadline: float | None = None) -> tuple[str, int, bool] | None:
        """(text, confident words, clean): clean when some words were read and all of them confidently;
        None when the deadline (time.monotonic(); default `timeout` from now) passed first."""
        deadline = time.monotonic() + self.timeout if deadline is None else deadline
        self.api.SetImage(image)
        milliseconds = int(1000 * (deadline - time.monotonic()))
        if milliseconds <= 0 or not self.api.Recognize(timeout=milliseconds):
            return None
        text = " ".join(self.api.GetUTF8Text().split())
        # Tesseract can report a confident "word" that is only whitespace: count real words only.
        confidences = [c for word, c in self.api.MapWordConfidences() if word.strip()] if text else []
        confident = sum(c >= CONFIDENT for c in confidences)
        return text, confident, bool(confidences) and confident == len(confidences)

    def read(self, image: Image.Image) -> OCRResult:
        """The image as it is, then light and dark glyphs binarised; stops at the first clean reading."""
        deadline = time.monotonic() + self.timeout
        image = image.convert("RGB")
        reading = self._pass(image, deadline)
        if reading is None:
            return OCRResult("", 0, binarised=False, timed_out=True)
        text, confident, clean = reading
        best = OCRResult(text, confident, binarised=False)
        if clean:
            return best
        grey = np.asarray(image.convert("L"))
        for text_pixels in (grey >= LIGHT_THRESHOLD, grey <= DARK_THRESHOLD):
            binarised = glyphs_binarised(grey, text_pixels)
            if binarised is None:
                continue
            reading = self._pass(binarised, deadline)
            if reading is None:
                return OCRResult(best.text, best.confident_words, best.binarised, timed_out=True)
            text, confident, clean = reading
            if confident > best.confident_words:
                best = OCRResult(text, confident, True)
            if clean:
                break
        return best


_worker_reader: TesseractReader | None = None


def _init_worker(tessdata: str, timeout: float) -> None:
    global _worker_reader
    silence_stderr()
    _worker_reader = TesseractReader(tessdata, timeout=timeout)


def silence_stderr() -> None:
    """Point this process's file descriptor 2 at /dev/null. Leptonica, inside Tesseract, writes a line such as
    `Error in boxClipToRectangle: box outside rectangle` there for harmless layout boxes, hundreds per corpus;
    a worker's exceptions still reach the parent through its pipe."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)


def _read_path(path: str) -> tuple[str, bool]:
    """(raw text, timed out) of one image, in a worker."""
    result = _worker_reader.read(open_rgb(path))
    return result.text, result.timed_out


def _read_decoded(image: Image.Image) -> tuple[str, bool]:
    """(raw text, timed out) of one image decoded by the caller (sent to the worker pickled)."""
    result = _worker_reader.read(image)
    return result.text, result.timed_out


def _serve(connection, read: Callable[[Any], tuple[str, bool]], tessdata: str, timeout: float) -> None:
    """A worker process: set up Tesseract, say so, then read one item per message until the pipe closes."""
    # tesserocr is imported only here, so its OpenMP runtime starts after this limit is set
    os.environ["OMP_THREAD_LIMIT"] = "1"
    _init_worker(tessdata, timeout)
    connection.send(None)
    while True:
        try:
            item = connection.recv()
        except EOFError:
            return
        try:
            connection.send((True, read(item)))
        except Exception as error:  # the caller's error, raised there (e.g. an image file that cannot be read)
            connection.send((False, error))


@dataclass
class _Worker:
    process: Any
    connection: Any
    ready: bool = False
    job: int | None = None      # index of the item being read
    started: float = 0.0        # time.monotonic() when it was sent


class TesseractWorkers:
    """Forked worker processes reading one item at a time, each with a hard deadline: a worker still busy
    `timeout + grace` seconds after it was given an item is killed (SIGKILL) and replaced, and the item's reading
    is `Reading("", True)`. A worker that dies on its own raises OCRWorkerDied (never a hang). Forked, not
    spawned: callers need no `__main__` guard; a caller that also runs torch creates the workers before torch
    starts its own threads."""

    def __init__(self, read: Callable[[Any], tuple[str, bool]], workers: int = 0, tessdata: str = TESSDATA,
                 timeout: float = OCR_TIMEOUT, grace: float = KILL_GRACE):
        language_data(tessdata, "eng")  # checked here: a worker failing to start only says it died
        self.context = multiprocessing.get_context("fork")
        self.arguments = (read, tessdata, timeout)
        self.kill_after = timeout + grace
        self.workers = [self._start() for _ in range(workers or os.cpu_count() or 1)]

    def _start(self) -> _Worker:
        ours, theirs = self.context.Pipe()
        process = self.context.Process(target=_serve, args=(theirs, *self.arguments), daemon=True)
        process.start()
        theirs.close()
        return _Worker(process, ours)

    def _stop(self, worker: _Worker) -> None:
        worker.connection.close()
        worker.process.kill()
        worker.process.join()

    def map(self, items: Sequence, progress: Callable[[int], None] | None = None) -> list[Reading]:
        """Each item's reading, in order; `progress(done)` after each."""
        readings: list[Reading | None] = [None] * len(items)
        pending, done = deque(range(len(items))), 0
        while done < len(items):
            for worker in self.workers:
                if worker.ready and worker.job is None and pending:
                    worker.job, worker.started = pending.popleft(), time.monotonic()
                    worker.connection.send(items[worker.job])
            busy = [w.started + self.kill_after for w in self.workers if w.job is not None]
            waited = max(0.0, min(busy) - time.monotonic()) if busy else None
            ready = set(wait([w.connection for w in self.workers] + [w.process.sentinel for w in self.workers],
                             waited))
            for index, worker in enumerate(self.workers):
                if worker.connection in ready or worker.process.sentinel in ready:
                    message = self._receive(worker)
                    if not worker.ready:
                        worker.ready = True
                        continue
                    ok, value = message
                    if not ok:
                        raise value
                    readings[worker.job], worker.job, done = Reading(*value), None, done + 1
                elif worker.job is not None and time.monotonic() >= worker.started + self.kill_after:
                    log.warning("OCR worker %d was still reading item %d %.0f s after it was given it: killed and "
                                "replaced", worker.process.pid, worker.job, self.kill_after)
                    readings[worker.job], done = Reading("", True), done + 1
                    self._stop(worker)
                    self.workers[index] = self._start()
                else:
                    continue
                if progress:
                    progress(done)
        return readings

    def _receive(self, worker: _Worker):
        """The worker's next message; OCRWorkerDied if it died instead (its pipe closed, or its process gone
        with nothing sent)."""
        try:
            if worker.connection.poll():
                return worker.connection.recv()
        except (EOFError, OSError):
            pass
        raise OCRWorkerDied(f"an OCR worker process died (killed by a signal or the OOM killer; exit code "
                            f"{worker.process.exitcode})")

    def close(self) -> None:
        for worker in self.workers:
            self._stop(worker)
        self.workers = []

    def __enter__(self) -> "TesseractWorkers":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class OCRPool:
    """Tesseract worker processes kept for as many `read` calls as the caller makes (the tagger's: one pool for
    its life, fed images it has decoded already)."""

    def __init__(self, workers: int = 0, tessdata: str = TESSDATA, timeout: float = OCR_TIMEOUT):
        self.workers = TesseractWorkers(_read_decoded, workers, tessdata, timeout)

    def read(self, images: Sequence[Image.Image]) -> list[str]:
        """Raw OCR text per decoded RGB image, in order; OCRWorkerDied if a worker process dies."""
        return [reading.text for reading in self.workers.map(images)]

    def close(self) -> None:
        self.workers.close()

    def __enter__(self) -> "OCRPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_images(paths: Sequence[str], workers: int = 0, tessdata: str = TESSDATA,
                progress: Callable[[int, float], None] | None = None, timeout: float = OCR_TIMEOUT,
                grace: float = KILL_GRACE) -> list[Reading]:
    """The reading of each image path, in order, across `workers` processes (0: all cores), at most `timeout`
    seconds of Tesseract per image (a worker still busy `grace` seconds later is killed and replaced);
    OCRWorkerDied if a worker process dies otherwise.

    `progress(done, images_per_second)` is called as results come in.
    """
    if not paths:
        return []
    start = time.perf_counter()

    def report(done: int) -> None:
        if progress:
            progress(done, done / (time.perf_counter() - start))

    try:
        with TesseractWorkers(_read_path, workers, tessdata, timeout, grace) as pool:
            readings = pool.map(paths, report)
    except OCRWorkerDied as died:
        raise OCRWorkerDied(f"{died}; nothing of these {len(paths)} images is kept") from None
    timed_out = [path for path, reading in zip(paths, readings) if reading.timed_out]
    if timed_out:
        log.warning("OCR stopped at the %.0f s deadline for %d of %d images (text kept: what was read before): %s",
                    timeout, len(timed_out), len(paths), ", ".join(timed_out[:20]))
    return readings


# ---- cleaning ----------------------------------------------------------------------------------------

def social_tokenizer() -> Callable[[str], list[str]]:
    """The posts' tokenizer: ekphrasis's SocialTokenizer, lowercased."""
    from ekphrasis.classes.tokenizer import SocialTokenizer

    return SocialTokenizer(lowercase=True).tokenize


def corpus_vocabulary(token_strings: Iterable[str], keyphrase_strings: Iterable[str]) -> set[str]:
    """Words of the corpus's posts (space-joined tokens) and keyphrases (`;`-joined phrases)."""
    words = set()
    for tokens in token_strings:
        words.update(tokens.split())
    for keyphrases in keyphrase_strings:
        words.update(keyphrases.replace(";", " ").split())
    return words


def clean_ocr(text: str, vocabulary: set[str], tokenize: Callable[[str], list[str]]) -> list[str]:
    """The paper's OCR cleaning: the kept tokens, or [] when the whole OCR text is dropped."""
    tokens = [t for t in tokenize(text) if t.isalpha() and len(t) > 1 and t in vocabulary]
    if not tokens:
        return []
    if sum(len(t) < 3 for t in tokens) >= 0.75 * len(tokens):
        return []
    if sum(len(t) > 3 for t in tokens) < 3:
        return []
    return tokens


def word_accuracy(expected: str, recognised: str) -> float:
    """Share of the expected words (case-insensitive, as a multiset) found among the recognised words."""
    want = Counter(expected.lower().split())
    got = Counter("".join(c if c.isalnum() else " " for c in recognised.lower()).split())
    return sum((want & got).values()) / max(1, sum(want.values()))

