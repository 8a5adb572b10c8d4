"""The bundled sample corpus (data/make_sample_corpus.py): determinism, format, counts, image kinds, distinctness."""

import hashlib
import importlib.util
import io
import json
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, UnidentifiedImageError

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("make_sample_corpus", ROOT / "data" / "make_sample_corpus.py")
msc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(msc)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus") / "sample"
    msc.main(["--out", str(out)])
    return out, json.loads((out / "expected.json").read_text(encoding="utf-8"))


def read_tweets(out):
    """All tweets of the archive in reading order, plus (file, line) of every line that is not JSON."""
    tweets, bad = [], []
    for path in sorted(out.glob("*.jsonl")):
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                bad.append((path.name, n))
                continue
            if "data" in obj:  # an API response page
                media = {m["media_key"]: m for m in obj["includes"]["media"]}
                users = {u["id"] for u in obj["includes"]["users"]}
                assert obj["meta"]["result_count"] == len(obj["data"])
                for t in obj["data"]:
                    assert t["author_id"] in users
                    t["_media"] = [media[k] for k in t.get("attachments", {}).get("media_keys", [])]
                    tweets.append(t)
            else:  # a flattened tweet
                assert obj["author"]["id"] == obj["author_id"]
                t = obj
                t["_media"] = t.get("attachments", {}).get("media", [])
                assert [m["media_key"] for m in t["_media"]] == t.get("attachments", {}).get("media_keys", [])
                tweets.append(t)
    return tweets, bad


def test_same_seed_gives_byte_identical_files(corpus, tmp_path):
    out, _ = corpus
    again = tmp_path / "again"
    again.mkdir()
    (again / "stale.jsonl").write_text("left from an earlier run\n")   # a rerun replaces the directory
    msc.main(["--out", str(again)])
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for rel in files:
        assert (out / rel).read_bytes() == (again / rel).read_bytes(), rel
    assert not list(tmp_path.glob("again.tmp-*"))


def test_too_few_posts_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="--posts must be at least"):
        msc.main(["--out", str(tmp_path / "x"), "--posts", "300"])
    assert not (tmp_path / "x").exists()


def test_archive_parses_and_reconciles_with_expected(corpus):
    out, exp = corpus
    tweets, bad = read_tweets(out)
    malformed = [(p["file"], p["line"]) for p in exp["posts"].values() if p["kind"] == "malformed_json"]
    assert bad == malformed and len(bad) == 1 and bad[0][0] == "tweets-flat.jsonl"
    ids = [t["id"] for t in tweets]
    assert len(ids) == len(set(ids)) == exp["counts"]["posts"] - 1 >= 599
    assert set(ids) | {pid for pid, p in exp["posts"].items() if p["kind"] == "malformed_json"} == set(exp["posts"])
    assert ids == sorted(ids, key=int)                     # reading order is chronological
    assert [t["created_at"] for t in tweets] == sorted(t["created_at"] for t in tweets)
    c = exp["counts"]
    assert c["posts"] == c["kept"] + sum(c["rejected"].values())
    for kind, (n, reason) in msc.REJECTIONS.items():
        assert c["by_kind"][kind] == n
        assert sum(1 for p in exp["posts"].values() if p["kind"] == kind and p["reason"] == reason) == n
    for kind, n in msc.KEPT_IMAGE_EDGES.items():
        assert c["by_kind"][kind] == n
    assert all((p["reason"] is None) == (p["expect"] == "kept") for p in exp["posts"].values())
    assert any(t.get("lang") != "en" for t in tweets)
    flat = [t for t in tweets if "author" in t]
    assert len(flat) >= 39 and all(exp["posts"][t["id"]]["file"] == "tweets-flat.jsonl" for t in flat)


def test_tweet_fields_and_entities(corpus):
    out, exp = corpus
    tweets, _ = read_tweets(out)
    for t in tweets:
        rec = exp["posts"][t["id"]]
        assert t["id"].isdigit() and t["author_id"].isdigit()
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.000Z", t["created_at"])
        text, ent = t["text"], t.get("entities", {})
        assert [text[h["start"]:h["end"]] for h in ent.get("hashtags", [])] == ["#" + h["tag"] for h in ent.get("hashtags", [])]
        assert [h["tag"] for h in ent.get("hashtags", [])] == rec["hashtags"]
        for m in ent.get("mentions", []):
            assert text[m["start"]:m["end"]] == "@" + m["username"]
        for u in ent.get("urls", []):
            assert text[u["start"]:u["end"]] == u["url"] and u["url"].startswith("https://t.co/")
            if "media_key" in u:
                assert u["media_key"] in t["attachments"]["media_keys"]
        for m in t["_media"]:
            assert m["type"] == "photo" and re.fullmatch(r"https://pbs\.example\.invalid/media/[\w]+\.(jpg|png)", m["url"])
            assert (out / "media" / m["url"].rsplit("/", 1)[1]).exists()
        if rec["kind"] == "retweet":
            assert text.startswith("RT @") and t["referenced_tweets"] == [{"type": "retweeted", "id": rec["retweet_of"]}]
            assert rec["retweet_of"] not in exp["posts"]
        else:
            assert "referenced_tweets" not in t and not text.startswith("RT ")
        assert (t["lang"] != "en") == (rec["kind"] == "not_english")
        n_media = len(t["_media"])
        assert (n_media == 0) == (rec["kind"] in ("no_image",))
        assert (n_media > 1) == (rec["kind"] == "several_images")
        assert (len(rec["hashtags"]) > 5) == (rec["kind"] == "too_many_hashtags")
        words = msc.text_words(text)
        if rec["lang"] == "en":
            assert (len(words) < 4) == (rec["kind"] == "too_few_tokens"), text
    kept = [t["text"] for t in tweets if exp["posts"][t["id"]]["expect"] == "kept"]
    for feature in (r"(?<!\w)@\w+", r"https://t\.co/", r"\b\d+\b", r"[\U0001F300-\U0001FAFF]", r"&amp;"):
        assert sum(bool(re.search(feature, s)) for s in kept) >= 5, feature


def test_duplicates_and_unique_texts(corpus):
    out, exp = corpus
    tweets, _ = read_tweets(out)
    by_id = {t["id"]: t for t in tweets}
    normalized = Counter()
    for t in tweets:
        rec = exp["posts"][t["id"]]
        if rec["kind"] == "duplicate_text":
            original = by_id[rec["duplicate_of"]]
            assert t["text"] == original["text"] and int(original["id"]) < int(t["id"])
            assert exp["posts"][original["id"]]["expect"] == "kept"
        else:
            normalized[tuple(msc.text_words(t["text"]))] += 1
    assert max(normalized.values()) == 1     # no accidental duplicates, even after normalization
    for rec in exp["posts"].values():
        if rec["kind"].startswith("duplicate_image"):
            original = exp["posts"][rec["duplicate_of"]]
            assert original["expect"] == "kept" and rec["images"][0]["duplicate_of"] == original["images"][0]["media_key"]


def test_hashtag_frequencies(corpus):
    out, exp = corpus
    tweets, _ = read_tweets(out)
    all_tags = Counter(h.lower() for t in tweets for h in {x["tag"].lower() for x in t.get("entities", {}).get("hashtags", [])})
    kept_tags = Counter(h.lower() for t in tweets if exp["posts"][t["id"]]["expect"] == "kept"
                        for h in {x.lower() for x in exp["posts"][t["id"]]["hashtags"]})
    assert 20 <= len(all_tags) <= 40 and set(all_tags) == set(exp["hashtags"])
    frequent = [t for t, h in exp["hashtags"].items() if h["frequent"]]
    rare = [t for t, h in exp["hashtags"].items() if not h["frequent"]]
    assert len(frequent) >= 20 and rare
    assert all(kept_tags[t] >= 10 for t in frequent)      # min_hashtag_count = 10 keeps them after every filter
    assert all(all_tags[t] < 10 for t in rare)            # and drops these whatever the filter order
    assert {t: (all_tags[t], kept_tags[t]) for t in exp["hashtags"]} == \
        {t: (h["posts_all"], h["posts_kept"]) for t, h in exp["hashtags"].items()}
    counts = sorted((kept_tags[t] for t in frequent), reverse=True)
    assert counts[0] >= 3 * counts[-1]                     # a long tail, not a flat distribution
    written = {x["tag"] for t in tweets for x in t.get("entities", {}).get("hashtags", [])}
    assert {"SaveTheOcean", "Top10", "2019Goals"} <= written and {"CatLife", "catlife"} <= written
    recs = [r for r in exp["posts"].values() if r["expect"] == "kept"]
    assert sum(bool(r["mid_hashtags"]) for r in recs) >= 50 and sum(bool(r["trailing_hashtags"]) for r in recs) >= 300
    assert sum(len(r["keyphrases"]) > 1 for r in recs) >= 50
    for r in recs:
        assert r["keyphrases"] and not set(r["rare_hashtags"]) & {k.replace(" ", "") for k in r["keyphrases"]}
        assert set(r["mid_hashtags"]) | set(r["trailing_hashtags"]) == set(r["hashtags"])
    for t, h in exp["hashtags"].items():
        assert h["segmentation"].replace(" ", "") == t


def test_image_only_posts(corpus):
    out, exp = corpus
    recs = list(exp["posts"].values())
    counts = Counter(r["kind"] for r in recs if r["image_only"])
    assert counts["image_photo"] >= 50 and counts["image_ocr"] >= 20 and counts["image_ocr_outline"] >= 10
    photos_of = {t: h["image"][6:] for t, h in exp["hashtags"].items() if h["image"].startswith("photo:")}
    posters = {t["tag"]: t["poster"] for t in msc.load_topics()["frequent"] if t["image"] == "ocr"}
    assert len(set(photos_of.values())) >= 6
    for r in recs:
        if r["image_only"]:
            (kp,) = r["keyphrases"][:1]
            assert not r["keyphrase_in_text"][kp] and not r["mid_hashtags"]
            img = r["images"][0]
            if r["kind"] == "image_photo":
                assert img["kind"] == "photo" and img["photo"] == photos_of[kp.replace(" ", "")]
            else:   # the keyphrase as a headline, with one of its topic's poster lines
                rendered = img["rendered_text"].lower()
                assert re.search(rf"(?<!\w){kp}(?!\w)", rendered), (kp, rendered)
                poster_words = {w for line in posters[kp.replace(" ", "")] for w in msc.text_words(line)}
                assert set(msc.text_words(rendered)) - set(kp.split()) <= poster_words, rendered
                assert len(msc.text_words(rendered)) >= len(kp.split()) + 3
    in_text = [r for r in recs if r["kind"] == "text"]
    assert sum(all(r["keyphrase_in_text"].values()) for r in in_text) >= 200
    assert sum(r["images"][0]["kind"] == "photo" for r in in_text) >= 50   # the category's photo with the text too


def test_image_files_are_what_they_claim(corpus):
    out, exp = corpus
    seen = Counter()
    for rec in exp["posts"].values():
        for img in rec["images"]:
            path = out / img["file"]
            data = path.read_bytes()
            assert hashlib.sha256(data).hexdigest() == img["sha256"] and len(data) == img["bytes"]
            seen[img["kind"]] += 1
            if img["kind"] == "zero_byte":
                assert data == b""
                with pytest.raises(UnidentifiedImageError):
                    Image.open(path)
                continue
            im = Image.open(io.BytesIO(data))
            assert im.format == img["format"] and im.size == (img["width"], img["height"])
            if img["kind"] == "truncated_jpeg":
                with pytest.raises(OSError):
                    im.load()
                continue
            im.load()
            assert im.mode == img["mode"]
            assert {"grayscale": "L", "cmyk": "CMYK", "palette": "P"}.get(img["kind"], im.mode) == im.mode
            if img["kind"] == "png_named_jpg":
                assert path.suffix == ".jpg" and im.format == "PNG"
            elif img["kind"] == "palette":
                assert path.suffix == ".png"
            else:
                assert path.suffix == ".jpg" and im.format == "JPEG"
            if im.mode == "RGB":
                assert 240 <= min(im.size) and max(im.size) <= 640
                rgb = np.asarray(im.reduce(4), dtype=np.int16)
                assert (rgb.max(-1) - rgb.min(-1)).mean() > 2   # colour, not grey stored as RGB
    assert seen.keys() >= {"photo", "ocr_text", "ocr_outline", "generic", "grayscale", "cmyk", "palette",
                           "png_named_jpg", "truncated_jpeg", "zero_byte", "duplicate_exact", "duplicate_near"}
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    assert size < 15e6


def test_distinct_images_by_dhash(corpus):
    out, exp = corpus
    distinct, dups = [], []
    for rec in exp["posts"].values():
        for img in rec["images"]:
            if img["kind"] in ("truncated_jpeg", "zero_byte"):
                continue
            h = msc.dhash(Image.open(out / img["file"]))
            assert f"{h:016x}" == img["dhash"]
            (dups if img["duplicate_of"] else distinct).append((img, h))
    hashes = np.array([h for _, h in distinct], dtype=np.uint64)
    x = hashes[:, None] ^ hashes[None, :]
    bits = np.unpackbits(x.view(np.uint8), axis=-1).reshape(len(hashes), len(hashes), -1).sum(-1)
    np.fill_diagonal(bits, 64)
    assert bits.min() >= msc.DHASH_MARGIN > 4     # no two intended-distinct images are duplicates by dHash
    assert len({img["sha256"] for img, _ in distinct}) == len(distinct)
    by_key = {img["media_key"]: (img, h) for img, h in distinct}
    assert {img["kind"] for img, _ in dups} == {"duplicate_exact", "duplicate_near"}
    for img, h in dups:
        original, oh = by_key[img["duplicate_of"]]
        if img["kind"] == "duplicate_exact":
            assert img["sha256"] == original["sha256"]
        else:
            assert img["sha256"] != original["sha256"] and (h ^ oh).bit_count() <= msc.NEAR_DUPLICATE_BITS


@pytest.mark.skipif(shutil.which("tesseract") is None, reason="tesseract is not installed")
def test_rendered_text_is_readable(corpus):
    """Dark-on-light renders read as they are; light-with-outline ones read once the light text is binarised."""
    pytesseract = pytest.importorskip("pytesseract")
    out, exp = corpus
    picked = {"ocr_text": [], "ocr_outline": []}
    for rec in exp["posts"].values():
        for img in rec["images"]:
            if img["kind"] in picked and len(picked[img["kind"]]) < 2:
                picked[img["kind"]].append(img)
    for kind, imgs in picked.items():
        for img in imgs:
            im = Image.open(out / img["file"]).convert("L")
            if kind == "ocr_outline":
                im = Image.fromarray(np.where(np.asarray(im) > 200, 0, 255).astype(np.uint8))
            got = re.findall(r"[a-z0-9]+", pytesseract.image_to_string(im).lower())
            assert set(msc.text_words(img["rendered_text"])) <= set(got), (img["file"], got)


@pytest.mark.skipif(shutil.which("tesseract") is None, reason="tesseract is not installed")
def test_pipeline_ocr_keeps_the_keyphrase_words_of_text_in_image_posts(corpus):
    """pipeline.ocr reads the posters and its paper cleaning (words of the corpus's posts and keyphrases, at
    least 3 longer than 3 letters) keeps them, headline words included: the image-wording path has input."""
    pytest.importorskip("tesserocr")
    from pipeline import ocr

    out, exp = corpus
    tweets, _ = read_tweets(out)
    tokenize = ocr.social_tokenizer()
    kept = [t for t in tweets if exp["posts"][t["id"]]["expect"] == "kept"]
    vocabulary = ocr.corpus_vocabulary((" ".join(tokenize(t["text"])) for t in kept),
                                       (";".join(exp["posts"][t["id"]]["keyphrases"]) for t in kept))
    posters = {"ocr_text": [], "ocr_outline": []}
    for t in kept:
        rec = exp["posts"][t["id"]]
        if rec["image_only"] and rec["images"][0]["kind"] in posters:
            posters[rec["images"][0]["kind"]].append(rec)
    subset = posters["ocr_text"][:8] + posters["ocr_outline"][:8]   # both styles, a few seconds of OCR
    assert len(subset) == 16
    texts = [r.text for r in ocr.read_images([str(out / rec["images"][0]["file"]) for rec in subset], workers=2)]
    kept_keyphrase = 0
    for rec, text in zip(subset, texts):
        tokens = ocr.clean_ocr(text, vocabulary, tokenize)
        # the cleaning keeps alphabetic tokens only: the 10 of "top 10" never survives, its "top" must
        headline_words = {w for w in rec["keyphrases"][0].split() if w.isalpha()}
        kept_keyphrase += bool(tokens) and headline_words <= set(tokens)
    assert kept_keyphrase >= 0.8 * len(subset), list(zip([r["images"][0]["rendered_text"] for r in subset], texts))


def test_new_posts_to_tag_are_new_plain_posts_with_distinct_images(corpus):
    out, expected = corpus
    rows = [json.loads(line) for line in (out / msc.NEW_POSTS_DIR / "posts.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == sorted(expected["new_posts"]) and len(rows) == len(msc.NEW_POSTS)
    archive_texts = {msc.html.unescape(p["text"]) for p in read_tweets(out)[0]}
    archive_hashes = [int(im["dhash"], 16) for p in expected["posts"].values() for im in p["images"] if im["dhash"]]
    for row in rows:
        about = expected["new_posts"][row["id"]]
        assert set(row) <= {"id", "text", "image"} and row["text"] == about["text"]
        assert "#" not in row["text"] and row["text"] not in archive_texts
        words = set(msc.text_words(row["text"]))
        if about["kind"] == "words":               # the text names the keyphrase; no other post's text does
            assert set(about["keyphrase"].split()) <= words
        else:
            assert not msc.content_words(about["keyphrase"]) & words
        if "image" not in row:
            assert about["image"] is None
            continue
        with Image.open(out / msc.NEW_POSTS_DIR / row["image"]) as image:
            assert image.format == "JPEG" and image.mode == "RGB"
            h = msc.dhash(image)
        assert min(msc.hamming(h, other) for other in archive_hashes) >= msc.DHASH_MARGIN
    assert sum("image" not in r for r in rows) == 1      # one text-only post
