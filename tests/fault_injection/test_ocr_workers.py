"""OCR workers that die fail the shard at once with a clear error (never a hung pool), and an image that
takes Tesseract too long is cut off at its deadline: by Tesseract itself, or by killing a worker that does not
return."""
from __future__ import annotations

import faulthandler
import functools
import logging
import multiprocessing
import os
import signal
import time

import numpy as np
import pytest
from PIL import Image

from pipeline import ocr

pytest.importorskip("tesserocr")
if not os.path.isfile(os.path.join(ocr.TESSDATA, "eng.traineddata")):
    pytest.skip("Tesseract's eng.traineddata is not installed", allow_module_level=True)


def slow_read(path: str) -> tuple[str, bool]:
    """A stand-in for reading one image in a worker: slow enough to be killed while busy."""
    if path.endswith("crash"):
        faulthandler.disable()  # pytest's traceback dump would only be noise here
        os.kill(os.getpid(), signal.SIGSEGV)  # what a segfault in Tesseract does to the worker
    time.sleep(0.2)
    return path, False


@pytest.fixture
def fake_reading(monkeypatch):
    monkeypatch.setattr(ocr, "_read_path", slow_read)
    monkeypatch.setattr(ocr, "_init_worker", lambda tessdata, timeout: None)


def test_a_worker_that_crashes_fails_the_shard_with_a_clear_error(fake_reading):
    paths = [f"image-{i}" for i in range(12)] + ["image-crash"] + [f"image-{i}" for i in range(12, 24)]
    start = time.monotonic()
    with pytest.raises(ocr.OCRWorkerDied, match="OCR worker process died"):
        ocr.read_images(paths, workers=2)
    assert time.monotonic() - start < 30
    assert not multiprocessing.active_children()  # the pool is gone, nothing left running


def test_a_worker_killed_from_outside_fails_the_shard_instead_of_hanging(fake_reading):
    killed = []

    def kill_a_worker(done, rate):
        if not killed:
            victim = multiprocessing.active_children()[0]
            os.kill(victim.pid, signal.SIGKILL)  # the OOM killer's way
            killed.append(victim.pid)

    with pytest.raises(ocr.OCRWorkerDied):
        ocr.read_images([f"image-{i}" for i in range(40)], workers=2, progress=kill_a_worker)
    assert killed


def test_an_image_that_takes_too_long_is_cut_at_its_deadline(tmp_path, caplog):
    noise = np.random.default_rng(0).random((1500, 1500)) > 0.5  # layout analysis on noise takes seconds
    Image.fromarray(noise.astype(np.uint8) * 255).convert("RGB").save(tmp_path / "noise.png")
    result = ocr.TesseractReader(timeout=0.05).read(Image.open(tmp_path / "noise.png"))
    assert result.timed_out and result.text == ""
    with caplog.at_level(logging.WARNING, logger="pipeline.ocr"):
        assert ocr.read_images([str(tmp_path / "noise.png")], workers=1, timeout=0.05) == [ocr.Reading("", True)]
    assert "deadline for 1 of 1 images" in caplog.text


def hang_on_stuck(path: str) -> tuple[str, bool]:
    """A stand-in for a Tesseract that never returns on one image (and ignores its own timeout)."""
    if "stuck" in path:
        time.sleep(3600)
    return f"text of {path}", False


def test_a_worker_stuck_past_the_deadline_is_killed_and_replaced_and_the_rest_read(monkeypatch, caplog):
    monkeypatch.setattr(ocr, "_read_path", hang_on_stuck)
    monkeypatch.setattr(ocr, "_init_worker", lambda tessdata, timeout: None)
    paths = ["a", "stuck-1", "b", "c", "stuck-2", "d"]
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="pipeline.ocr"):
        readings = ocr.read_images(paths, workers=1, timeout=0.3, grace=0.2)
    assert time.monotonic() - start < 10
    assert readings == [ocr.Reading("", True) if "stuck" in p else ocr.Reading(f"text of {p}", False)
                        for p in paths]  # one worker: each later image was read by its replacement
    assert caplog.text.count("killed and replaced") == 2 and "deadline for 2 of 6 images" in caplog.text
    assert not multiprocessing.active_children()


def test_run_ocr_records_an_image_stopped_at_the_deadline_and_writes_the_shard(tmp_path, monkeypatch):
    import luigi

    from pipeline import image_tasks, shards
    from test_image_tasks import make_dataset

    make_dataset(tmp_path)
    real_read = ocr._read_path

    def stuck_on_p4(path: str) -> tuple[str, bool]:
        return hang_on_stuck("stuck") if path.endswith("p4.jpg") else real_read(path)

    monkeypatch.setattr(ocr, "_read_path", stuck_on_p4)
    monkeypatch.setattr(ocr, "read_images", functools.partial(ocr.read_images, timeout=5.0, grace=0.5))
    task = image_tasks.RunOCR(source="archive", input_path=str(tmp_path / "in"), dataset_dir=str(tmp_path),
                              split="train", shard_index=0, workers=2)
    assert luigi.build([task], local_scheduler=True, workers=1, log_level="ERROR")
    data, attrs = shards.read_shard(task.output().path), shards.read_attrs(task.output().path)
    assert attrs["ocr_meta"]["counts"]["ocr_timeout"] == 1 and attrs["ocr_meta"]["ocr_timeout_posts"] == ["p4"]
    assert data["ocr_raw"][3] == "" and "coffee" in data["ocr_raw"][0].lower()  # the others read as ever


def crash_on_red(image: Image.Image) -> tuple[str, bool]:
    """A stand-in for reading a decoded image in a worker, killed on a red one."""
    if image.getpixel((0, 0)) == (255, 0, 0):
        os.kill(os.getpid(), signal.SIGKILL)
    return "text", False


def test_the_taggers_long_lived_pool_fails_the_same_way(monkeypatch):
    monkeypatch.setattr(ocr, "_read_decoded", crash_on_red)
    monkeypatch.setattr(ocr, "_init_worker", lambda tessdata, timeout: None)
    images = [Image.new("RGB", (8, 8), (0, 0, 255))] * 6 + [Image.new("RGB", (8, 8), (255, 0, 0))]
    with ocr.OCRPool(workers=2) as pool:
        assert pool.read(images[:6]) == ["text"] * 6
        with pytest.raises(ocr.OCRWorkerDied):
            pool.read(images)
