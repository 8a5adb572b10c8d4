"""The paper's filters, one function per stage. Each takes records, keeps or rejects each one into a
`StageLog` (the reasons below), and yields the records kept, so counts always reconcile.

filter_posts      retweet, not_english, no_image, multiple_images, no_hashtag, too_many_hashtags, duplicate_text
fetch_images      image_missing, bad_url, http_error, network_error, too_large, empty_file, not_an_image,
                  not_jpeg, truncated, grayscale          (see pipeline.fetch and pipeline.images)
release_images    the same reasons, for a CMKP release's own image files; the unit is the image and the post
                  is kept either way (image_present false)
dedupe_images     duplicate_image (same bytes), near_duplicate_image (dHash within `max_distance` bits)
tokenize_posts    too_few_tokens, no_hashtag (no hashtag survived segmentation)
filter_hashtags   rare_hashtags_only (every keyphrase seen in fewer than `min_count` posts)

Within a stage the first record wins (posts arrive in crawl order, which is deterministic).
"""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable, Iterator
from urllib.parse import urlsplit

from durable.faults import kill_point
from pipeline.fetch import FetchError, ImageJournal, ImageStore, read_local, sniff
from pipeline.images import ImageRejected, NearDuplicateIndex, dhash, validate_image
from pipeline.report import StageLog
from pipeline.text import PostTokenizer, hashtags_of

_URL = re.compile(r"https?://\S+")


def photos(record: dict) -> list[dict]:
    return [m for m in record.get("media", []) if m.get("type") == "photo"]


def text_key(text: str) -> str:
    """What makes two texts duplicates: the same words, ignoring case, links and spacing."""
    return " ".join(_URL.sub(" ", text).lower().split())


def filter_posts(records: Iterable[dict], log: StageLog, max_hashtags: int, language: str) -> Iterator[dict]:
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


def check_image(key: str, read: Callable[[], bytes], store: ImageStore, max_pixels: int, require_jpeg: bool) -> dict:
    """Read one image's bytes, check them and store them: the outcome an `ImageJournal` records under `key`.

    Only images that pass validation enter the store; the format (and the stored extension) comes from the bytes.
    """
    try:
        data = read()
        if data and sniff(data) is None:
            raise ImageRejected("not_an_image", f"{len(data)} bytes of an unknown format")
        valid = validate_image(data, max_pixels=max_pixels, require_jpeg=require_jpeg)
    except (FetchError, ImageRejected) as err:
        return {"key": key, "reason": err.reason, "detail": err.detail, "retry": getattr(err, "retryable", False)}
    sha, path = store.put(data, sniff(data))
    return {"key": key, "sha256": sha, "path": path, "size": [valid.width, valid.height],
            "dhash": f"{dhash(valid.image):016x}"}


def journaled_image(journal: ImageJournal, key: str, read: Callable[[], bytes], max_pixels: int,
                    require_jpeg: bool) -> dict:
    """The journal's outcome for `key` if it has a final one, else a fresh `check_image` (journaled)."""
    outcome = journal.get(key)
    if outcome is None:
        outcome = check_image(key, read, journal.store, max_pixels, require_jpeg)
        kill_point("image_checked")  # stored (if valid), not yet journaled
        journal.add(outcome)
    return outcome


def image_fields(outcome: dict) -> dict:
    """The post record's image fields for a stored image."""
    return {"image_sha256": outcome["sha256"], "image_path": outcome["path"], "image_present": True,
            "image_size": outcome["size"], "image_dhash": outcome["dhash"]}


def fetch_images(records: Iterable[dict], log: StageLog, journal: ImageJournal, download: Callable[[str], bytes],
                 max_bytes: int, max_pixels: int, require_jpeg: bool) -> Iterator[dict]:
    """Get each post's one photo (the archive's copy, else its URL), check it and store it; posts whose photo
    fails are rejected with the reason.

    Adds image_url, image_sha256, image_path, image_present, image_size and image_dhash (16 hex digits).
    Outcomes already in `journal` are reused (a resumed run), and the same URL is never fetched twice.
    """
    try:
        for r in records:
            (photo,) = photos(r)
            if photo.get("file"):
                key, read = f"file:{photo['file']}", lambda path=photo["file"]: read_local(path, max_bytes)
            elif photo.get("url"):
                key, read = photo["url"], lambda url=photo["url"]: download(url)
            else:
                log.reject(r["id"], "image_missing", f"media {photo.get('media_key')} has no url and no file")
                continue
            outcome = journaled_image(journal, key, read, max_pixels, require_jpeg)
            if "reason" in outcome:
                log.reject(r["id"], outcome["reason"], outcome["detail"])
                continue
            r.update(image_url=photo.get("url", ""), **image_fields(outcome))
            log.keep()
            yield r
    finally:
        journal.flush()  # what was done before a failure is kept for the rerun


def release_images(records: Iterable[dict], log: StageLog, journal: ImageJournal, files: dict[str, Path],
                   max_bytes: int, max_pixels: int, require_jpeg: bool) -> Iterator[dict]:
    """A CMKP release's own image files (`files`: file name -> path), found by the basename of each post's
    image URL, checked and stored like fetched images. The unit of `log` is the image: a post with no image
    URL is not counted, a missing or failing image is rejected with its reason, and every post is yielded
    (the release's splits and texts are kept as given), with image_present false where its image failed.
    A release without images (`files` empty) has no image to check: every post passes, none is counted.
    """
    try:
        for r in records:
            url = r.get("image_url", "")
            r.update(image_sha256="", image_path="", image_present=False, image_size=[0, 0])
            if url and files:
                # A lookup among the directory's own names: no path is ever built from the URL.
                name = urlsplit(url).path.rsplit("/", 1)[-1]
                if name not in files:
                    log.reject(r["id"], "image_missing", f"no images/{name[:200]} in the release (post kept)")
                else:
                    outcome = journaled_image(journal, f"file:{files[name]}",
                                                 lambda path=files[name]: read_local(path, max_bytes),
                                                 max_pixels, require_jpeg)
                    if "reason" in outcome:
                        log.reject(r["id"], outcome["reason"], f"images/{name}: {outcome['detail']} (post kept)")
                    else:
                        r.update(image_fields(outcome))
                        log.keep()
            yield r
    finally:
        journal.flush()


def dedupe_images(records: Iterable[dict], log: StageLog, max_distance: int) -> Iterator[dict]:
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


def tokenize_posts(records: Iterable[dict], log: StageLog, tokenizer: PostTokenizer, min_tokens: int
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


def filter_hashtags(records: list[dict], log: StageLog, min_count: int) -> Iterator[dict]:
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
