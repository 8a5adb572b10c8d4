"""Image validation reasons, colour conversion, the dHash and its near-duplicate index, the image store and
the journal of image outcomes."""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from pipeline.clean import check_image
from pipeline.fetch import FetchError, ImageJournal, ImageStore, sniff
from pipeline.images import ImageRejected, NearDuplicateIndex, dhash, hamming, validate_image
from text_archive_fixture import colour_jpeg, gray_jpeg, png_bytes


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


# The checks' settings (the pipeline passes its task parameters).
CHECKS = {"max_pixels": 89_478_485, "require_jpeg": True}


def validate(data: bytes, **kwargs):
    return validate_image(data, **{**CHECKS, **kwargs})


def reason(data: bytes, **kwargs) -> str:
    with pytest.raises(ImageRejected) as err:
        validate(data, **kwargs)
    return err.value.reason


def test_colour_jpeg_is_kept_with_its_size():
    valid = validate(colour_jpeg(1, size=(40, 30)))
    assert (valid.width, valid.height, valid.format, valid.image.mode) == (40, 30, "JPEG", "RGB")


def test_rejection_reasons():
    assert reason(b"") == "empty_file"
    assert reason(b"hello, not an image at all") == "not_an_image"
    assert reason(colour_jpeg(1)[:300]) == "truncated"
    data = colour_jpeg(1, size=(256, 256))
    assert reason(data[: len(data) // 2]) == "truncated"  # header fine, pixel data cut short
    assert reason(png_bytes(1)) == "not_jpeg"
    assert reason(gray_jpeg(1)) == "grayscale"
    gray_as_rgb = Image.fromarray(np.repeat(np.arange(64, dtype=np.uint8).reshape(8, 8, 1) * 4, 3, axis=2))
    assert reason(encode(gray_as_rgb, "JPEG", quality=95)) == "grayscale"
    assert reason(colour_jpeg(1, size=(300, 200)), max_pixels=300 * 200 - 1) == "too_large"


def test_decompression_bomb_is_refused_before_decoding():
    # A 1x1 PNG whose header is patched to declare a 30000 x 30000 canvas: refused from the header alone.
    data = bytearray(encode(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"))
    ihdr = data.index(b"IHDR")
    data[ihdr + 4:ihdr + 12] = struct.pack(">II", 30000, 30000)
    data[ihdr + 17:ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr:ihdr + 17])))
    assert reason(bytes(data), require_jpeg=False, max_pixels=10_000_000) == "too_large"
    assert reason(bytes(data), require_jpeg=False) == "too_large"  # 9e8 pixels > the default cap too


def test_colour_modes_are_converted_without_require_jpeg():
    rng = np.random.default_rng(0)
    rgba = Image.fromarray(rng.integers(0, 256, (16, 16, 4), dtype=np.uint8), "RGBA")
    palette = Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).convert("P")
    cmyk = Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).convert("CMYK")
    for data in (encode(rgba, "PNG"), encode(palette, "PNG"), encode(cmyk, "JPEG")):
        valid = validate(data, require_jpeg=False)
        assert valid.image.mode == "RGB" and (valid.width, valid.height) == (16, 16)
    gray_palette = Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16)).convert("P")
    assert reason(encode(gray_palette, "PNG"), require_jpeg=False) == "grayscale"


def test_dhash_is_stable_under_reencoding_and_separates_different_images():
    a = validate(colour_jpeg(5, size=(120, 90))).image
    a_again = validate(colour_jpeg(5, size=(120, 90), quality=50)).image
    b = validate(colour_jpeg(6, size=(120, 90))).image
    assert 0 <= dhash(a) < 1 << 64
    assert hamming(dhash(a), dhash(a_again)) <= 4
    assert hamming(dhash(a), dhash(b)) > 4
    # Known value: a left-to-right ramp gets brighter at every step -> all 64 bits set.
    ramp = Image.fromarray(np.tile(np.arange(0, 252, 28, dtype=np.uint8), (8, 1)))
    assert dhash(ramp) == (1 << 64) - 1


def test_near_duplicate_index_is_exact_up_to_the_distance():
    rng = np.random.default_rng(1)
    hashes = [int(x) for x in rng.integers(0, 2**63, size=300, dtype=np.int64)]
    index = NearDuplicateIndex(max_distance=4)
    for i, h in enumerate(hashes):
        index.add(h, f"p{i}")
    base = hashes[7]
    for flips in ([], [0], [3, 17], [5, 20, 40, 63], [1, 2, 30, 50]):
        query = base
        for bit in flips:
            query ^= 1 << bit
        assert index.find(query) == "p7", flips
    five = base ^ sum(1 << b for b in (0, 13, 26, 39, 52))
    brute = [k for h, k in zip(hashes, (f"p{i}" for i in range(300))) if hamming(h, five) <= 4]
    assert index.find(five) == (brute[0] if brute else None)


def test_sniff_and_content_addressed_store(tmp_path):
    assert sniff(colour_jpeg(1)) == "jpg" and sniff(png_bytes(1)) == "png" and sniff(b"GIF89a...") == "gif"
    assert sniff(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "webp" and sniff(b"<html>") is None
    store = ImageStore(tmp_path)
    sha, path = store.put(colour_jpeg(1), "jpg")
    again = store.put(colour_jpeg(1), "jpg")
    assert again == (sha, path) and path == f"images/{sha[:2]}/{sha}.jpg"
    assert (tmp_path / path).read_bytes() == colour_jpeg(1)
    assert [p.name for p in (tmp_path / "images").rglob("*")] == [sha[:2], f"{sha}.jpg"]


def test_journal_resumes_final_outcomes_and_redoes_the_rest(tmp_path):
    store = ImageStore(tmp_path)
    params = {"max_bytes": 1000, "require_jpeg": True}
    journal = ImageJournal(tmp_path / "j.jsonl", store, params, batch=2)
    stored = check_image("u1", lambda: colour_jpeg(1), store, **CHECKS)
    assert stored["size"] == [64, 48] and (tmp_path / stored["path"]).read_bytes() == colour_jpeg(1)
    assert stored["dhash"] == f"{dhash(validate(colour_jpeg(1)).image):016x}"
    journal.add(stored)
    journal.add(check_image("u2", lambda: png_bytes(2), store, **CHECKS))
    assert len((tmp_path / "j.jsonl").read_text().splitlines()) == 3  # header + one batch of two, appended

    def unreachable():
        raise FetchError("network_error", "timed out", retryable=True)

    journal.add(check_image("u3", unreachable, store, **CHECKS))
    journal.add(check_image("u4", lambda: colour_jpeg(4), store, **CHECKS))
    journal.add(check_image("u5", lambda: colour_jpeg(5), store, **CHECKS))  # still buffered: lost in a kill
    del journal
    with open(tmp_path / "j.jsonl", "a") as f:
        f.write('{"key": "u6", "sha2')  # a line torn by a kill mid-write

    resumed = ImageJournal(tmp_path / "j.jsonl", store, params, batch=2)
    assert resumed.get("u1") == stored
    assert resumed.get("u2")["reason"] == "not_jpeg" and resumed.get("u2")["retry"] is False
    assert resumed.get("u3") is None  # a network error may pass: asked again
    assert resumed.get("u5") is None and resumed.get("u6") is None
    (tmp_path / resumed.get("u4")["path"]).unlink()
    assert resumed.get("u4") is None  # its stored file has gone: redone
    assert (tmp_path / "j.jsonl").read_text().endswith("\n")  # the torn line was cut off

    # Outcomes judged under other caps or rules do not apply: the journal starts afresh.
    other = ImageJournal(tmp_path / "j.jsonl", store, {"max_bytes": 1000, "require_jpeg": False})
    assert other.get("u1") is None and other.get("u2") is None
    assert len((tmp_path / "j.jsonl").read_text().splitlines()) == 1
