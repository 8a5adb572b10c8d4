"""OCR reading (tesserocr, binarised light/dark glyph passes, process pool) and the paper's OCR cleaning."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import ocr
from ocr_images import CASES, leptonica_noise_image, photo_without_text, render, write_cases

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    directory = tmp_path_factory.mktemp("ocr")
    cases = write_cases(directory)
    blank = str(directory / "photo.jpg")
    photo_without_text().save(blank)
    return cases, blank


def test_pool_reads_rendered_text_with_word_accuracy_at_least_095(rendered):
    cases, blank = rendered
    progress = []
    readings = ocr.read_images([p for p, _ in cases] + [blank], workers=2,
                               progress=lambda done, rate: progress.append(done))
    assert not any(reading.timed_out for reading in readings)
    texts = [reading.text for reading in readings]
    assert len(texts) == len(cases) + 1
    accuracies = [ocr.word_accuracy(expected, text) for (_, expected), text in zip(cases, texts)]
    assert sum(accuracies) / len(accuracies) >= 0.95, list(zip(texts, accuracies))
    outline = [a for (style, _), a in zip(CASES, accuracies) if style == "outline"]
    assert outline and min(outline) >= 0.95
    assert progress == list(range(1, len(cases) + 2))
    # The photo without text yields no word of the rendered vocabulary.
    rendered_words = {w for _, expected in cases for w in expected.split()}
    assert not rendered_words & set(texts[-1].lower().split())


def test_light_outlined_text_needs_the_binarised_pass():
    reader = ocr.TesseractReader()
    style, lines = next(case for case in CASES if case[0] == "outline")
    image = render(style, lines)
    plain_text, _, _ = reader._pass(image)
    result = reader.read(image)
    assert result.binarised
    assert ocr.word_accuracy(" ".join(lines), result.text) == 1.0
    assert ocr.word_accuracy(" ".join(lines), plain_text) < 1.0


def _stderr_of(code: str) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120, check=True)
    return done.stderr


def test_pool_workers_keep_leptonica_noise_off_stderr(tmp_path):
    path = tmp_path / "noisy.png"                 # lossless: the workers read exactly these pixels
    leptonica_noise_image().save(path)
    loud = _stderr_of(f"from PIL import Image; from pipeline import ocr; ocr.TesseractReader().read(Image.open({str(path)!r}))")
    if "Error in" not in loud:
        pytest.skip("this Tesseract build prints nothing for the probe image")
    quiet = _stderr_of(f"from pipeline import ocr; assert len(ocr.read_images([{str(path)!r}] * 2, workers=2)) == 2")
    assert quiet == ""


def test_missing_language_data_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="eng.traineddata not found"):
        ocr.TesseractReader(tessdata=str(tmp_path))


def test_word_accuracy_counts_expected_words_as_a_multiset():
    assert ocr.word_accuracy("happy happy day", "HAPPY day!") == pytest.approx(2 / 3)
    assert ocr.word_accuracy("a b", "") == 0.0


VOCAB = ocr.corpus_vocabulary(["summer vibes at the beach", "coffee time"], ["national coffee day;beach life"])


def test_vocabulary_from_posts_and_keyphrases():
    assert VOCAB == {"summer", "vibes", "at", "the", "beach", "coffee", "time", "national", "day", "life"}


@pytest.mark.parametrize("text, expected", [
    # alphabetic, length > 1, in the corpus; 'sale' (not in corpus), '50%', '!' dropped
    ("NATIONAL COFFEE DAY!! 50% sale at the Beach", ["national", "coffee", "day", "at", "the", "beach"]),
    ("", []),
    ("zzz qqq", []),                                   # nothing left after the vocabulary filter
    ("coffee beach summer", ["coffee", "beach", "summer"]),
    ("coffee beach at", []),                           # only 2 tokens longer than 3 characters
    ("coffee beach summer at at at at at at at at at", []),  # 9 of 12 (75%) shorter than 3 characters
    ("coffee beach summer at at at at at at at at", ["coffee", "beach", "summer"] + ["at"] * 8),  # 8/11 < 75%
])
def test_clean_ocr_rules(text, expected):
    assert ocr.clean_ocr(text, VOCAB, ocr.social_tokenizer()) == expected
