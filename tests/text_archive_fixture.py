"""A tiny twarc2 archive written by the tests themselves: one post per filter outcome, real image bytes."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image


def colour_jpeg(seed: int, size=(64, 48), mode: str = "RGB", quality: int = 90) -> bytes:
    rng = np.random.default_rng(seed)
    # Blocky random colour: distinct dHashes per seed, and robust to re-encoding.
    blocks = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    img = Image.fromarray(blocks).resize(size, Image.Resampling.NEAREST)
    if mode != "RGB":
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def png_bytes(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def gray_jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, size=(32, 32), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def tweet(tid: int, text: str, media_keys=(), lang="en", retweet=False) -> dict:
    tags = []
    for word_start, word in _words(text):
        if word.startswith("#"):
            tags.append({"start": word_start, "end": word_start + len(word), "tag": word[1:]})
    t = {"id": str(tid), "text": text, "lang": lang, "author_id": "42", "created_at": "2019-02-01T10:00:00.000Z",
         "entities": {"hashtags": tags}}
    if media_keys:
        t["attachments"] = {"media_keys": list(media_keys)}
    if retweet:
        t["referenced_tweets"] = [{"type": "retweeted", "id": "1"}]
    return t


def _words(text: str):
    pos = 0
    for word in text.split(" "):
        yield pos, word.rstrip(".,!")
        pos += len(word) + 1


# (id, text, media keys, extra tweet fields) and the outcome each post must meet; see EXPECTED_REJECTS.
POSTS = [
    (1, "Loving the game tonight with friends #SuperBowl", ["m1"], {}),
    (2, "What a catch by the team, amazing play #SuperBowl #NFL", ["m2"], {}),
    (3, "RT @fan: what a catch by the team tonight #SuperBowl", ["m3"], {"retweet": True}),
    (4, "Qué partido tan bueno esta noche #SuperBowl", ["m4"], {"lang": "es"}),
    (5, "No picture with this one sadly tonight #SuperBowl", [], {}),
    (6, "Two pictures of the same great game #SuperBowl", ["m5", "m6"], {}),
    (7, "A post about the game without any tags at all", ["m7"], {}),
    (8, "So many tags on this post today #a #b #c #d #e #f", ["m8"], {}),
    (9, "loving the game tonight with friends #SuperBowl", ["m9"], {}),
    (10, "The picture of this one got cut short #SuperBowl", ["m10"], {}),
    (11, "This picture is really a png file #SuperBowl", ["m11"], {}),
    (12, "This picture file is completely empty #SuperBowl", ["m12"], {}),
    (13, "An old black and white photo here #SuperBowl", ["m13"], {}),
    (14, "Posting the very same photo once again #SuperBowl", ["m14"], {}),
    (15, "Posting a re-encoded copy of the photo #NFL", ["m15"], {}),
    (16, "wow #NFL", ["m16"], {}),
    (17, "Sunset over the lake this evening #RareTag", ["m17"], {}),
    (18, "Another great day at the stadium with the fans #NFL", ["m18"], {}),
]
EXPECTED_REJECTS = {
    "crawl": {"malformed_json": 1, "duplicate_id": 1},
    "filter": {"retweet": 1, "not_english": 1, "no_image": 1, "multiple_images": 1, "no_hashtag": 1,
               "too_many_hashtags": 1, "duplicate_text": 1},
    "images": {"truncated": 1, "not_jpeg": 1, "empty_file": 1, "grayscale": 1},
    "dedupe": {"duplicate_image": 1, "near_duplicate_image": 1},
    "tokenize": {"too_few_tokens": 1},
    "hashtags": {"rare_hashtags_only": 1},
}
KEPT_IDS = ["1", "2", "18"]


def media_bytes() -> dict[str, bytes]:
    good = {f"m{i}": colour_jpeg(i) for i in range(1, 19)}
    good["m10"] = colour_jpeg(10)[:400]  # truncated JPEG
    good["m11"] = png_bytes(11)  # PNG named .jpg
    good["m12"] = b""  # zero-byte file
    good["m13"] = gray_jpeg(13)
    good["m14"] = good["m1"]  # the same bytes as post 1's photo
    good["m15"] = colour_jpeg(2, quality=60)  # post 2's photo re-encoded
    good["m18"] = colour_jpeg(18, mode="CMYK")  # kept: CMYK is converted to RGB
    return good


def write_archive(directory: Path) -> Path:
    """Two twarc2 page files (one holding a malformed line and a repeated tweet) and `media/`."""
    directory.mkdir(parents=True, exist_ok=True)
    media_dir = directory / "media"
    media_dir.mkdir()
    for key, data in media_bytes().items():
        (media_dir / f"{key}.jpg").write_bytes(data)
    tweets = [tweet(tid, text, keys, **extra) for tid, text, keys, extra in POSTS]
    media = [{"media_key": f"m{i}", "type": "photo", "url": f"https://pbs.twimg.com/media/m{i}.jpg"}
             for i in range(1, 19)]
    pages = [tweets[:10], tweets[10:]]
    with open(directory / "a.jsonl", "w") as f:
        f.write(json.dumps({"data": pages[0], "includes": {"media": media, "users": []},
                            "meta": {"result_count": len(pages[0])}}) + "\n")
        f.write('{"data": [ this is not json\n')
    with open(directory / "b.jsonl", "w") as f:
        f.write(json.dumps({"data": pages[1], "includes": {"media": media}, "meta": {}}) + "\n")
        f.write(json.dumps(tweets[0]) + "\n")  # a flattened copy of tweet 1: duplicate id
    return directory
