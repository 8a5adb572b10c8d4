"""Image files that cannot be read, that lie outside the archive, or that are unusual but valid: each is kept
or rejected with its reason (see pipeline/images.py for the decisions on MPO, EXIF orientation and tiny
images), and a huge image is checked with bounded memory."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.clean import fetch_images, release_images
from pipeline.fetch import ImageJournal, ImageStore
from pipeline.images import dhash, open_rgb, validate_image
from pipeline.report import StageLog
from pipeline.sources.archive import media_files
from pipeline.sources.cmkp import release_image_files
from text_archive_fixture import colour_jpeg


def validate(data: bytes):
    """The checks with the pipeline's default settings (the tasks pass their parameters)."""
    return validate_image(data, max_pixels=89_478_485, require_jpeg=True)

ROOT = Path(__file__).resolve().parents[2]


def blocks(seed: int, size=(64, 48)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(size, Image.Resampling.NEAREST)


def jpeg(image: Image.Image, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=90, **kwargs)
    return buf.getvalue()


def post(tid: int, file: Path) -> dict:
    return {"id": str(tid), "text": "t", "media": [{"media_key": f"k{tid}", "type": "photo", "url": "",
                                                   "file": str(file)}]}


def fetch(tmp_path, files: list[Path]) -> tuple[dict, StageLog]:
    log = StageLog("images")
    journal = ImageJournal(tmp_path / "journal.jsonl", ImageStore(tmp_path / "out"), {}, batch=1)
    kept = list(fetch_images([post(i, f) for i, f in enumerate(files)], log, journal, lambda url: b"", 1 << 20, 89_478_485, True))
    log.counts()  # read == kept + rejected
    return {**{r["id"]: "stored" for r in kept}, **{r["id"]: r["reason"] for r in log.rejects}}, log


def test_files_that_cannot_be_read_or_lie_outside_the_archive(tmp_path):
    archive = tmp_path / "archive"
    media = archive / "media"
    media.mkdir(parents=True)
    (tmp_path / "secret.jpg").write_bytes(colour_jpeg(9))  # outside the archive
    for key in ("ok", "deleted", "now_a_dir", "target"):
        (media / f"{key}.jpg").write_bytes(colour_jpeg(len(key)))
    (media / "escape.jpg").symlink_to(tmp_path / "secret.jpg")
    (media / "escape_relative.jpg").symlink_to(Path("..", "..", "secret.jpg"))
    (media / "inside.jpg").symlink_to("target.jpg")  # a link within media/ is fine
    listed = media_files(archive)
    # The archive changes after it was listed: a file deleted, another replaced by a directory.
    (media / "deleted.jpg").unlink()
    (media / "now_a_dir.jpg").unlink()
    (media / "now_a_dir.jpg").mkdir()
    order = ["ok", "deleted", "now_a_dir", "escape", "escape_relative", "inside"]
    outcomes, log = fetch(tmp_path, [listed[key] for key in order])
    assert [outcomes[str(i)] for i in range(len(order))] == [
        "stored", "image_missing", "unreadable", "outside_archive", "outside_archive", "stored"]
    assert not list((tmp_path / "out").rglob(f"*{__import__('hashlib').sha256(colour_jpeg(9)).hexdigest()}*"))
    journal = [json.loads(line) for line in (tmp_path / "journal.jsonl").read_text().splitlines()[1:]]
    # Missing and unreadable files may come back: a rerun looks again; a link out of the archive is final.
    assert [o.get("retry") for o in journal] == [None, True, True, False, False, None]


CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 1, 2  # linux/capability.h: what lets root read any file
LINUX_CAPABILITY_VERSION_3 = 0x20080522


def in_a_child_without_read_override(function):
    """`function()`'s JSON result, computed in a forked child that has dropped the capabilities that let root
    ignore file permissions (a no-op for another user, who has none): permissions then apply to root as to
    anyone, so CI (run as root) meets an unreadable file as a user does."""
    import ctypes

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            header, data = Header(LINUX_CAPABILITY_VERSION_3, 0), (Data * 2)()
            if libc.capget(ctypes.byref(header), data) != 0:
                raise OSError(ctypes.get_errno(), "capget")
            dropped = ~((1 << CAP_DAC_OVERRIDE) | (1 << CAP_DAC_READ_SEARCH)) & 0xFFFFFFFF
            data[0].effective &= dropped
            data[0].permitted &= dropped
            if libc.capset(ctypes.byref(header), data) != 0:
                raise OSError(ctypes.get_errno(), "capset")
            result = {"value": function()}
        except BaseException as error:  # reported to the parent, never raised in a forked pytest
            result = {"error": repr(error)}
        os.write(write, json.dumps(result).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        answer = json.loads(pipe.read() or b'{"error": "the child died"}')
    os.waitpid(pid, 0)
    assert "error" not in answer, answer["error"]
    return answer["value"]


def test_a_file_without_read_permission_is_unreadable(tmp_path):
    path = tmp_path / "media" / "k.jpg"
    path.parent.mkdir()
    path.write_bytes(colour_jpeg(1))
    path.chmod(0)

    def fetch_it():
        try:
            path.open("rb").close()
            return "the file could be read"
        except PermissionError:
            return fetch(tmp_path, [path])[0]

    assert in_a_child_without_read_override(fetch_it) == {"0": "unreadable"}


def test_a_release_image_linking_out_of_the_release_is_refused_and_its_post_kept(tmp_path):
    release = tmp_path / "release"
    (release / "images").mkdir(parents=True)
    (tmp_path / "secret.jpg").write_bytes(colour_jpeg(9))
    (release / "images" / "a.jpg").symlink_to(tmp_path / "secret.jpg")
    log = StageLog("release_images", unit="images")
    journal = ImageJournal(tmp_path / "journal.jsonl", ImageStore(tmp_path / "out"), {}, batch=1)
    records = [{"id": "cmkp-test-0", "image_url": "https://pbs.twimg.com/media/a.jpg"}]
    (kept,) = release_images(records, log, journal, release_image_files(release), 1 << 20, 89_478_485, True)
    assert kept["image_present"] is False
    assert [(r["reason"], r["detail"].endswith("(post kept)")) for r in log.rejects] == [("outside_archive", True)]


def test_a_multi_picture_jpeg_is_a_jpeg():
    buf = io.BytesIO()
    blocks(1).save(buf, "MPO", save_all=True, append_images=[blocks(2)])
    valid = validate(buf.getvalue())
    assert (valid.format, valid.width, valid.height) == ("MPO", 64, 48)
    assert dhash(valid.image) == dhash(validate(jpeg(blocks(1))).image)  # its first picture


def test_exif_orientation_is_ignored():
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees to display"
    tagged, plain = validate(jpeg(blocks(3), exif=exif)), validate(jpeg(blocks(3)))
    assert (tagged.width, tagged.height) == (64, 48)  # as stored, not as a viewer would turn it
    assert dhash(tagged.image) == dhash(plain.image)


def test_a_1x1_image_is_too_small_and_8x8_is_kept():
    for size, reason in (((1, 1), "too_small"), ((64, 7), "too_small"), ((8, 8), None)):
        try:
            validate(jpeg(blocks(4, size)))
            outcome = None
        except Exception as err:  # ImageRejected
            outcome = err.reason
        assert outcome == reason, size


HUGE_CHILD = """
import resource, sys
from pipeline.images import validate_image
data = open(sys.argv[1], "rb").read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    valid = validate_image(data, 89_478_485, True)
    outcome = [valid.width, valid.height, list(valid.image.size)]
except Exception as err:
    outcome = err.reason
print(outcome, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""


def test_a_huge_valid_image_is_checked_with_bounded_memory(tmp_path):
    # 9,000 x 8,000 pixels (under the 89.5 M pixel cap): 216 MB decoded, 432 MB more as the int16 array the
    # colour check would build at full size.
    path = tmp_path / "huge.jpg"
    path.write_bytes(jpeg(blocks(5, (9000, 8000))))
    (tmp_path / "cut.jpg").write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    results = []
    for name in ("huge.jpg", "cut.jpg"):
        done = subprocess.run([sys.executable, "-c", HUGE_CHILD, str(tmp_path / name)], cwd=ROOT, timeout=100,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        outcome, grown_mb = done.stdout.rsplit(" ", 1)
        results.append((outcome, int(grown_mb)))
    (kept, kept_mb), (cut, _) = results
    assert kept == "[9000, 8000, [1024, 910]]" and cut == "truncated"
    print(f"checking a 9000x8000 JPEG grew the process by {kept_mb} MB")
    assert kept_mb < 40, f"checking the image grew the process by {kept_mb} MB"


LOAD_CHILD = """
import resource, sys
from pipeline.images import open_rgb
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
image = open_rgb(sys.argv[1])
print(list(image.size), image.mode, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""


def test_feature_stages_load_a_huge_image_reduced_and_others_unchanged(tmp_path):
    path = tmp_path / "huge.jpg"
    path.write_bytes(jpeg(blocks(5, (9000, 8000))))
    done = subprocess.run([sys.executable, "-c", LOAD_CHILD, str(path)], cwd=ROOT, timeout=100,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    size, mode, grown_mb = done.stdout.split("] ")[0] + "]", *done.stdout.split("] ")[1].split()
    assert size == "[4096, 3641]" and mode == "RGB"
    assert int(grown_mb) < 300  # decoded at half scale (4,500 x 4,000), then reduced; in full it grows 550 MB
    small = tmp_path / "small.jpg"
    small.write_bytes(jpeg(blocks(6, (640, 480))))
    with Image.open(small) as image:
        assert np.array_equal(np.asarray(open_rgb(small)), np.asarray(image.convert("RGB")))
