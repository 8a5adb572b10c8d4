"""Image wordings: Tesseract OCR of post images, then the paper's cleaning as the authors' code does it.

Reading: tesserocr (its wheel bundles Tesseract; pointed at the system tessdata) in a process pool with one
OpenMP thread per worker, because Tesseract's own OpenMP threading costs more than it gains on small images.
Two passes per image: the image as it is, and -- only when the image has enough near-white pixels -- a
binarised copy where light pixels become black on white, which is how light text with a dark outline over a
photo (meme captions) becomes readable; plain Tesseract reads almost nothing there. The pass with more
confident words wins.

Failures: each image's reading has a deadline (`OCR_TIMEOUT`, Tesseract's own cooperative timeout: layout
analysis can overrun it by a few seconds); an image that reaches it keeps what the passes before read (often
nothing) and is logged. A worker process that dies (a segfault in Tesseract, the OOM killer) breaks the pool,
and `read_images` raises `OCRWorkerDied` at once instead of waiting for it: the shard fails, nothing is
written, a rerun redoes it.

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
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

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

log = logging.getLogger(__name__)


class OCRWorkerDied(RuntimeError):
    pass


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
    a worker's exceptions still reach the parent through the pool."""
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


def _init_pool_worker(tessdata: str, timeout: float) -> None:
    # a worker may start long after the pool (on demand): it sets its own OpenMP limit before tesserocr loads
    os.environ["OMP_THREAD_LIMIT"] = "1"
    _init_worker(tessdata, timeout)


class OCRPool:
    """Tesseract worker processes kept for as many `read` calls as the caller makes (the tagger's: one pool for
    its life, fed images it has decoded already). Workers start as in `read_images`: forked, one OpenMP thread
    each; a caller that also runs torch creates the pool before torch has started its own threads."""

    def __init__(self, workers: int = 0, tessdata: str = TESSDATA, timeout: float = OCR_TIMEOUT):
        language_data(tessdata, "eng")
        self.workers = workers or os.cpu_count() or 1
        self.pool = ProcessPoolExecutor(self.workers, multiprocessing.get_context("fork"), _init_pool_worker,
                                        (tessdata, timeout))

    def read(self, images: Sequence[Image.Image]) -> list[str]:
        """Raw OCR text per decoded RGB image, in order; OCRWorkerDied if a worker process dies."""
        try:
            return [text for text, _ in self.pool.map(_read_decoded, images,
                                                      chunksize=max(1, min(4, len(images) // self.workers)))]
        except BrokenProcessPool:
            raise OCRWorkerDied("an OCR worker process died (killed by a signal or the OOM killer)") from None

    def close(self) -> None:
        self.pool.shutdown()

    def __enter__(self) -> "OCRPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_images(paths: Sequence[str], workers: int = 0, tessdata: str = TESSDATA,
                progress: Callable[[int, float], None] | None = None, timeout: float = OCR_TIMEOUT) -> list[str]:
    """Raw OCR text per image path, in order, across `workers` processes (0: all cores), at most `timeout`
    seconds of Tesseract per image; OCRWorkerDied if a worker process dies.

    `progress(done, images_per_second)` is called as results come in.
    """
    if not paths:
        return []
    language_data(tessdata, "eng")  # checked here: a worker's initializer failing would only break the pool
    workers = workers or os.cpu_count() or 1
    start = time.perf_counter()
    results: list[str] = []
    timed_out: list[str] = []
    # Workers are forked (no __main__ guard needed in callers); tesserocr is imported only inside them, so its
    # OpenMP runtime starts there, after OMP_THREAD_LIMIT is set.
    env_before = os.environ.get("OMP_THREAD_LIMIT")
    os.environ["OMP_THREAD_LIMIT"] = "1"   # read by Tesseract when a spawned worker starts
    try:
        # concurrent.futures, not multiprocessing.Pool: a worker that dies breaks this pool at once
        # (BrokenProcessPool) where Pool would wait for its lost tasks forever.
        with ProcessPoolExecutor(workers, multiprocessing.get_context("fork"), _init_worker,
                                 (tessdata, timeout)) as pool:
            for path, (text, stopped) in zip(paths, pool.map(_read_path, paths, chunksize=4)):
                results.append(text)
                if stopped:
                    timed_out.append(path)
                if progress:
                    progress(len(results), len(results) / (time.perf_counter() - start))
    except BrokenProcessPool:
        raise OCRWorkerDied(f"an OCR worker process died (killed by a signal or the OOM killer) after "
                            f"{len(results)} of {len(paths)} images; nothing of this batch is kept") from None
    finally:
        if env_before is None:
            os.environ.pop("OMP_THREAD_LIMIT", None)
        else:
            os.environ["OMP_THREAD_LIMIT"] = env_before
    if timed_out:
        log.warning("OCR stopped at the %.0f s deadline for %d of %d images (text kept: what was read before): %s",
                    timeout, len(timed_out), len(paths), ", ".join(timed_out[:20]))
    return results


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

