"""The paper's filters, one function per stage. Each takes records, keeps or rejects each one into a
`StageLog` (the reasons below), and yields the records kept, so counts always reconcile.

filter_posts      retweet, not_english, no_image, multiple_images, no_hashtag, too_many_hashtags, duplicate_text
fetch_images      image_missing, bad_url, http_error, network_error, too_large, empty_file, not_an_image,
                  not_jpeg, truncated, grayscale          (see pipeline.fetch and pipeline.images)
dedupe_images     duplicate_image (same bytes), near_duplicate_image (dHash within `max_distance` bits)
tokenize_posts    too_few_tokens, no_hashtag (no hashtag survived segmentation)
filter_hashtags   rare_hashtags_only (every keyphrase seen in fewer than `min_count` posts)

Within a stage the first record wins (posts arrive in crawl order, which is deterministic).
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Callable, Iterable, Iterator

from pipeline.fetch import FetchError, ImageStore, read_local, sniff
from pipeline.images import DEFAULT_MAX_PIXELS, ImageRejected, NearDuplicateIndex, dhash, validate_image
from pipeline.report import StageLog
from pipeline.text import PostTokenizer, hashtags_of

_URL = re.compile(r"https?://\S+")


def photos(record: dict) -> list[dict]:
    return [m for m in record.get("media", []) if m.get("type") == "photo"]


def text_key(text: str) -> str:
    """What makes two texts duplicates: the same words, ignoring case, links and spacing."""
    return " ".join(_URL.sub(" ", text).lower().split())


def filter_posts(records: Iterable[dict], log: StageLog, max_hashtags: int = 5, language: str = "en"
                 ) -> Iterator[dict]:
    seen_texts: dict[str, str] = {}
    for r in records:
        n_photos = len(photos(r))
        n_hashtags = len(hashtags_of(r["text"], r.get("entities")))
        if r.get("is_retweet") or r["text"].startswith("RT @"):
            log.reject(r["id"], "retweet")
        elif r.get("lang") != language:
            log.reject(r["id"], "not_english", f"lang={r.get('lang')!r}")
        elif n_photos == 0:
            log.reject(r["id"], "no_image", f"{len(r.get('media', []))} media, no photo")
        elif n_photos > 1:
            log.reject(r["id"], "multiple_images", f"{n_photos} photos")
        elif n_hashtags == 0:
            log.reject(r["id"], "no_hashtag")
        elif n_hashtags > max_hashtags:
            log.reject(r["id"], "too_many_hashtags", f"{n_hashtags} > {max_hashtags}")
        elif text_key(r["text"]) in seen_texts:
            log.reject(r["id"], "duplicate_text", f"same text as {seen_texts[text_key(r['text'])]}")
        else:
            seen_texts[text_key(r["text"])] = r["id"]
            log.keep()
            yield r


def fetch_images(records: Iterable[dict], log: StageLog, store: ImageStore, download: Callable[[str], bytes],
                 max_bytes: int, max_pixels: int = DEFAULT_MAX_PIXELS, require_jpeg: bool = True
                 ) -> Iterator[dict]:
    """Get each post's one photo (the archive's copy, else its URL), check it and store it.

    Adds image_url, image_sha256, image_path, image_present, image_size and image_dhash (16 hex digits).
    Only images that pass validation enter the store.
    """
    for r in records:
        (photo,) = photos(r)
        try:
            if photo.get("file"):
                data = read_local(photo["file"], max_bytes)
            elif photo.get("url"):
                data = download(photo["url"])
            else:
                raise FetchError("image_missing", f"media {photo.get('media_key')} has no url and no file")
            if data and sniff(data) is None:
                raise ImageRejected("not_an_image", f"{len(data)} bytes of an unknown format")
            valid = validate_image(data, max_pixels=max_pixels, require_jpeg=require_jpeg)
        except (FetchError, ImageRejected) as err:
            log.reject(r["id"], err.reason, err.detail)
            continue
        sha, path = store.put(data, sniff(data))
        r.update(image_url=photo.get("url", ""), image_sha256=sha, image_path=path, image_present=True,
                 image_size=[valid.width, valid.height], image_dhash=f"{dhash(valid.image):016x}")
        log.keep()
        yield r


def dedupe_images(records: Iterable[dict], log: StageLog, max_distance: int = 4) -> Iterator[dict]:
    by_sha: dict[str, str] = {}
    near = NearDuplicateIndex(max_distance)
    for r in records:
        h = int(r["image_dhash"], 16)
        if r["image_sha256"] in by_sha:
            log.reject(r["id"], "duplicate_image", f"same image bytes as {by_sha[r['image_sha256']]}")
        elif (other := near.find(h)) is not None:
            log.reject(r["id"], "near_duplicate_image", f"dHash within {max_distance} bits of {other}")
        else:
            by_sha[r["image_sha256"]] = r["id"]
            near.add(h, r["id"])
            log.keep()
            yield r


def tokenize_posts(records: Iterable[dict], log: StageLog, tokenizer: PostTokenizer, min_tokens: int = 4
                   ) -> Iterator[dict]:
    for r in records:
        tokens, keyphrases, hashtags = tokenizer.tokenize_post(r["text"], r.get("entities"))
        if len(tokens) < min_tokens:
            log.reject(r["id"], "too_few_tokens", f"{len(tokens)} < {min_tokens}: {' '.join(tokens)}")
        elif not keyphrases:
            log.reject(r["id"], "no_hashtag", "no hashtag left after segmentation")
        else:
            r.update(tokens=" ".join(tokens), keyphrases=keyphrases, hashtags=hashtags)
            log.keep()
            yield r


def filter_hashtags(records: list[dict], log: StageLog, min_count: int = 10) -> Iterator[dict]:
    """Drop keyphrases used by fewer than `min_count` posts, then posts left without any."""
    counts = Counter(k for r in records for k in set(r["keyphrases"]))
    for r in records:
        frequent = [k for k in r["keyphrases"] if counts[k] >= min_count]
        if not frequent:
            log.reject(r["id"], "rare_hashtags_only",
                       "; ".join(f"{k} ({counts[k]})" for k in r["keyphrases"]))
            continue
        r["keyphrases"] = frequent
        log.keep()
        yield r
