"""Write the bundled sample corpus: a small, deterministic twarc2-style tweet archive with images.

    python data/make_sample_corpus.py --out DIR [--seed N] [--posts N]

DIR gets (written to a temporary directory next to it, then renamed into place):

    search-page-01.jsonl   twarc2 search pages, one API v2 response per line ({"data", "includes", "meta", "__twarc"})
    search-page-02.jsonl   (ASCII-escaped JSON, as twarc2 writes it)
    tweets-flat.jsonl      the newest posts as twarc2 `flatten` output, one tweet per line (`author`,
                           `attachments.media` expanded; UTF-8); one line in it is deliberately malformed JSON
    media/<media_key>.<ext>  the images the archive ships, looked up by media_key
    expected.json          ground truth for the tests: every post's kind, keyphrases, expected fate and images
    new-posts/posts.jsonl  a handful of posts written after the archive, never in it, to tag with a trained model:
                           the `posts` source format, one {"id", "text", "image"} per line (image relative to the
                           file, absent for a text-only post; no hashtags); their topics in expected.json
    new-posts/images/      their images

Reading order (file names sorted, lines and tweets in order) is chronological; an intended duplicate always comes
after its original in reading order, in time and in id, so "first seen wins" and "oldest wins" agree.

What is in it (counts of the edge cases are fixed, the rest scales with --posts):
- 30 frequent hashtags with a long-tail frequency (each on at least MIN_POSTS_PER_TAG kept posts) and 4 rare ones
  (fewer than 10 posts in all, so `min_hashtag_count` = 10 filters them); CamelCase and case variants, digit
  hashtags (#Top10, #2019Goals), mid-post and trailing hashtags, mentions, t.co URLs, numbers, emoji, `&amp;`.
- Posts whose keyphrase is in the text and posts where only the image tells it: a variant (crop, scale, flip,
  colour shift) of the hashtag's scikit-image photo, or poster text (dark on light, or light with a dark outline
  over a textured photo, which plain Tesseract misreads): the keyphrase as a headline and one of the topic's
  poster lines under or over it, words the posts use, so the paper's OCR cleaning keeps them (it drops texts
  with fewer than 3 known words longer than 3 letters, which every bare 1-3 word keyphrase is).
- One defect per rejected post, so the rejection reason is unambiguous whatever the filter order (REJECTIONS).
- Every image meant to be distinct is at least DHASH_MARGIN bits (64-bit dHash) from every other one; intended
  near-duplicates are within NEAR_DUPLICATE_BITS of their original.

Photos come from the files scikit-image ships in its wheel (read directly, never through its downloader); text is
rendered with DejaVu fonts (Pillow's bundled font where DejaVu is missing).
"""

import argparse
import hashlib
import html
import io
import json
import random
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image, ImageDraw, ImageEnhance, ImageFont

# The pipeline's own perceptual hash, so "distinct" here means distinct to the dedupe stage.
from pipeline.images import dhash, hamming

TOPICS_FILE = Path(__file__).resolve().parent / "sample" / "topics.json"
PHOTO_DIR = Path(skimage.data.__file__).parent   # the photos scikit-image ships in its wheel
FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
FONTS = ("DejaVuSans-Bold.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSansCondensed-Bold.ttf")
# Textured photos behind outlined text; none of them is a hashtag's photo, so they teach no category.
TEXTURES = ("brick.png", "grass.png", "gravel.png", "ihc.png")
GRAYSCALE_PHOTOS = ("camera.png", "moon.png", "coins.png")

GENERATOR_VERSION = 2
DEFAULT_SEED = 2020
DEFAULT_POSTS = 800
MIN_POSTS_PER_TAG = 14       # kept posts per frequent hashtag, comfortably above min_hashtag_count = 10
DHASH_MARGIN = 12            # distinct images differ in >= 12 of 64 bits (the pipeline calls <= 4 a duplicate)
NEAR_DUPLICATE_BITS = 2      # near-duplicates differ in <= 2 bits
JPEG = dict(format="JPEG", quality=75, optimize=False, progressive=False, subsampling=2)
EPOCH = datetime(2019, 1, 3, 8, 0, 0, tzinfo=timezone.utc)
TWITTER_EPOCH_MS = 1288834974657  # snowflake ids count milliseconds from here

# kind of rejected post -> (how many, the reason expected in the rejects file; names as pipeline/clean.py and
# pipeline/images.py write them). The paper keeps colour JPEGs only, so a palette PNG and a PNG named .jpg are
# rejected as not_jpeg by their bytes.
REJECTIONS = {
    "malformed_json": (1, "malformed_json"),
    "retweet": (12, "retweet"),
    "not_english": (12, "not_english"),
    "no_image": (10, "no_image"),
    "several_images": (8, "multiple_images"),
    "too_many_hashtags": (6, "too_many_hashtags"),
    "too_few_tokens": (8, "too_few_tokens"),
    "duplicate_text": (6, "duplicate_text"),
    "duplicate_image_exact": (4, "duplicate_image"),
    "duplicate_image_near": (4, "near_duplicate_image"),
    "grayscale_image": (5, "grayscale"),
    "truncated_jpeg": (2, "truncated"),
    "zero_byte_image": (1, "empty_file"),
    "png_named_jpg": (1, "not_jpeg"),
    "palette_image": (2, "not_jpeg"),
    "rare_hashtag_only": (10, "rare_hashtags_only"),
}
# kept posts whose image needs converting (CMYK JPEG -> RGB)
KEPT_IMAGE_EDGES = {"cmyk_image": 2}
RARE_PLUS_FREQUENT = 8        # kept posts that also carry a rare hashtag (dropped from their keyphrases)
# The new posts to tag: (hashtag whose topic the post is about, how it says so). `words` names the keyphrase
# in the text; `related` and `image_*` posts leave it to the image (or, related, to the topic's other words).
NEW_POSTS = (("catlife", "image_photo"), ("rocketlaunch", "image_photo"), ("deepspace", "image_photo"),
             ("mondaymotivation", "image_ocr"), ("happybirthday", "image_ocr_outline"),
             ("coffeetime", "words"), ("sunset", "words"), ("worldcup", "related"))
NEW_POSTS_DIR = "new-posts"
SECONDARY_TAG_SHARE = 0.2     # text posts with a second trailing hashtag
MEDIA_URL_SHARE = 0.85        # posts whose text ends with the photo's t.co link, as most real ones do
STOPWORDS = {"the", "of", "a", "to", "and"}


def load_topics(path=TOPICS_FILE):
    topics = json.loads(path.read_text(encoding="utf-8"))
    for t in topics["frequent"]:  # the templates must say what their mode promises
        words = t["segmentation"].split()
        for tpl in t["words"]:
            assert set(words) <= set(text_words(tpl)), (t["tag"], tpl)
        for tpl in t["related"]:
            assert not content_words(t["segmentation"]) & set(text_words(tpl)), (t["tag"], tpl)
        for w in t["written"]:
            assert w.lower() == t["tag"], (t["tag"], w)
    templates = set()
    for tpl in [s for t in topics["frequent"] for m in ("mid", "words", "related") for s in t[m]] + \
            topics["generic"] + topics["openers"] + topics["closers"]:
        templates.update(text_words(tpl))
    for t in topics["frequent"]:  # poster lines survive the paper's OCR cleaning (see text_image)
        assert ("poster" in t) == (t["image"] == "ocr"), t["tag"]
        for line in t.get("poster", []):
            words = text_words(line)
            assert set(words) <= templates, (t["tag"], line, set(words) - templates)
            assert sum(len(w) > 3 for w in words + t["segmentation"].split()) >= 3, (t["tag"], line)
    return topics


def text_words(text):
    """Lowercase words and numbers of a text, without hashtags, mentions and URLs."""
    text = re.sub(r"https?://\S+|[#@]\w+", " ", text.lower())
    return re.findall(r"[a-z0-9]+", text)


def content_words(segmentation):
    return set(segmentation.split()) - STOPWORDS


def snowflake(moment, sequence):
    ms = int(moment.timestamp() * 1000) - TWITTER_EPOCH_MS
    return str((ms << 22) | (sequence & 0x3FFFFF))


# ---------------------------------------------------------------------------------------------- images

@dataclass
class ImageFile:
    kind: str            # photo, ocr_text, ocr_outline, generic, grayscale, cmyk, palette, png_named_jpg, ...
    data: bytes
    ext: str             # the file name's extension (png_named_jpg: "jpg" although the bytes are PNG)
    fmt: str             # what the bytes really are: JPEG, PNG, or "" for broken files
    mode: str            # Pillow mode as decoded ("" for broken files)
    size: tuple = (0, 0)
    dhash: int | None = None
    category: str = ""   # the photo it shows (photo kinds)
    words: str = ""      # the text rendered in it (ocr kinds)
    duplicate_of: str = ""  # media_key of the original (duplicate kinds)


class ImageMaker:
    """Makes every image of the corpus, keeping intended-distinct ones DHASH_MARGIN bits apart."""

    def __init__(self, rng):
        self.rng = rng
        self.photos = {}
        self.hashes = []
        self.fonts = [FONT_DIR / f for f in FONTS if (FONT_DIR / f).exists()]
        self.font_note = ", ".join(f.name for f in self.fonts) or "Pillow's bundled font"

    def photo(self, name):
        """The named photo (RGB, or L for grey ones), at most 640 px a side: every variant is smaller anyway."""
        if name not in self.photos:
            img = Image.open(PHOTO_DIR / name)
            img = img.convert("L" if img.mode == "L" else "RGB")
            img.thumbnail((640, 640), Image.Resampling.LANCZOS)
            self.photos[name] = img
        return self.photos[name]

    def font(self, size, index):
        if not self.fonts:
            return ImageFont.load_default(size=size)
        return ImageFont.truetype(str(self.fonts[index % len(self.fonts)]), size)

    def distinct(self, draw_candidate, fmt="JPEG", tries=60):
        """Draw candidates until one is DHASH_MARGIN bits from every image so far; encode it."""
        for _ in range(tries):
            img = draw_candidate()
            data = encode(img, fmt)
            h = dhash(Image.open(io.BytesIO(data)))
            if not self.hashes or np.bitwise_count(np.array(self.hashes, np.uint64) ^ np.uint64(h)).min() >= DHASH_MARGIN:
                self.hashes.append(h)
                return img, data, h
        raise RuntimeError("could not draw an image distinct from the others; lower DHASH_MARGIN")

    def crop_variant(self, base, out_width):
        """A random crop (55-90% of the side), maybe mirrored, resized, with a small colour shift."""
        r = self.rng
        w, h = base.size
        s = r.uniform(0.55, 0.9)
        cw, ch = int(w * s), int(h * s * r.uniform(0.85, 1.1))
        ch = min(ch, h)
        x, y = r.randint(0, w - cw), r.randint(0, h - ch)
        img = base.crop((x, y, x + cw, y + ch))
        if r.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        out_width = min(640, max(out_width, -(-240 * cw // ch)))   # at least 240 px high
        img = img.resize((out_width, round(out_width * ch / cw)), Image.Resampling.BILINEAR)
        if img.mode == "RGB":
            img = ImageEnhance.Color(img).enhance(r.uniform(0.8, 1.3))
        img = ImageEnhance.Brightness(img).enhance(r.uniform(0.85, 1.15))
        return ImageEnhance.Contrast(img).enhance(r.uniform(0.85, 1.2))

    def photo_image(self, name, kind="photo", mode="RGB"):
        width = self.rng.choice((320, 352, 384, 416))
        img, data, h = self.distinct(lambda: self.crop_variant(self.photo(name), width).convert(mode))
        return ImageFile(kind, data, "jpg", "JPEG", mode, img.size, h, category=name)

    def generic_image(self, kind="generic", fmt="JPEG", ext="jpg", finish=lambda img: img):
        """A synthetic picture: a two-colour gradient with a few random shapes (says nothing about a hashtag)."""
        r = self.rng

        def draw():
            w, h = r.choice((320, 360, 400, 480)), r.choice((240, 300, 320, 360))
            img = gradient(w, h, random_colour(r), random_colour(r), r.choice(("h", "v")))
            d = ImageDraw.Draw(img)
            for _ in range(r.randint(3, 7)):
                x0, y0 = r.randint(-40, w - 20), r.randint(-40, h - 20)
                box = (x0, y0, x0 + r.randint(30, w // 2), y0 + r.randint(30, h // 2))
                shape = r.choice((d.ellipse, d.rectangle))
                shape(box, fill=random_colour(r))
            return finish(img)

        img, data, h = self.distinct(draw, fmt=fmt)
        return ImageFile(kind, data, ext, fmt, img.mode, img.size, h)

    def text_image(self, keyphrase, poster_lines, outlined):
        """Poster text: the keyphrase as a large headline and one poster line in smaller type, under it (or, one
        time in four, over it); dark on a light gradient, or light with a dark outline over a texture."""
        r = self.rng
        case = str.upper if r.random() < 0.5 else str.title
        headline = case(keyphrase)
        tagline = split_lines(case(r.choice(poster_lines)), r)
        blocks = [("headline", [headline]), ("tagline", tagline)]
        if r.random() < 0.25:
            blocks.reverse()

        def fitted(lines, size, index, width):
            """The largest font from `size` down (at least 20 px) that fits every line in 86% of the width."""
            font = self.font(size, index)
            while max(font.getlength(line) for line in lines) > 0.86 * width and size > 20:
                size -= 2
                font = self.font(size, index)
            return font, size

        def draw():
            w, h = r.choice((480, 512, 560)), r.choice((320, 360, 400))
            if outlined:
                img = self.crop_variant(self.photo(r.choice(TEXTURES)).convert("RGB"), w).resize((w, h))
                img = tint(img, random_colour(r, 120, 190))
                fill, stroke = r.choice(((255, 255, 255), (255, 250, 230), (240, 250, 255))), (0, 0, 0)
            else:
                img = gradient(w, h, random_colour(r, 200, 255), random_colour(r, 170, 255), r.choice(("h", "v")))
                fill, stroke = random_colour(r, 0, 70), None
            font_index = r.randrange(len(FONTS))
            head_font, head_size = fitted([headline], r.randint(44, 56), font_index, w)
            tag_font, tag_size = fitted(tagline, min(head_size - 8, r.randint(28, 36)), font_index, w)
            fonts = {"headline": (head_font, head_size), "tagline": (tag_font, tag_size)}
            placed = [(line, *fonts[name]) for name, lines in blocks for line in lines]
            heights = [int(size * 1.3) for _, _, size in placed]
            d = ImageDraw.Draw(img)
            top = r.randint(int(0.08 * h), max(int(0.08 * h), h - sum(heights) - int(0.08 * h)))
            for (line, font, size), line_h in zip(placed, heights):
                left = r.randint(int(0.05 * w), max(int(0.05 * w), int(w - font.getlength(line) - 0.05 * w)))
                d.text((left, top), line, font=font, fill=fill,
                       stroke_width=max(2, size // 12) if stroke else 0, stroke_fill=stroke)
                top += line_h
            return img

        img, data, h = self.distinct(draw)
        kind = "ocr_outline" if outlined else "ocr_text"
        words = " ".join(line for _, lines in blocks for line in lines)
        return ImageFile(kind, data, "jpg", "JPEG", "RGB", img.size, h, words=words)

    def exact_duplicate(self, original, key):
        return ImageFile("duplicate_exact", original.data, original.ext, original.fmt, original.mode, original.size,
                         original.dhash, original.category, original.words, duplicate_of=key)

    def near_duplicate(self, original, key):
        """Re-encoded at a lower quality, maybe 2% brighter: new bytes, (almost) the same dHash."""
        decoded = Image.open(io.BytesIO(original.data)).convert("RGB")
        for brightness, quality in ((1.02, 70), (1.0, 70), (1.0, 90)):
            img = ImageEnhance.Brightness(decoded).enhance(brightness)
            data = encode(img, "JPEG", quality=quality)
            h = dhash(Image.open(io.BytesIO(data)))
            if hamming(h, original.dhash) <= NEAR_DUPLICATE_BITS:
                break
        else:
            raise RuntimeError("no near-duplicate within NEAR_DUPLICATE_BITS")
        return ImageFile("duplicate_near", data, "jpg", "JPEG", "RGB", img.size, h, original.category,
                         original.words, duplicate_of=key)

    def grayscale_image(self):
        return self.photo_image(self.rng.choice(GRAYSCALE_PHOTOS), kind="grayscale", mode="L")

    def cmyk_image(self, photo_name):
        if photo_name:
            return self.photo_image(photo_name, kind="cmyk", mode="CMYK")
        return self.generic_image(kind="cmyk", finish=lambda img: img.convert("CMYK"))

    def palette_image(self):
        # 64 colours, stored as PNG: a palette image cannot be a JPEG.
        def quantize(img):
            return img.quantize(colors=64, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)

        return self.generic_image(kind="palette", fmt="PNG", ext="png", finish=quantize)

    def png_named_jpg(self):
        return self.generic_image(kind="png_named_jpg", fmt="PNG", ext="jpg")

    def truncated_jpeg(self):
        f = self.generic_image(kind="truncated_jpeg")
        self.hashes.pop()  # it will not decode, so it takes no place among the distinct images
        return ImageFile("truncated_jpeg", f.data[: len(f.data) * 3 // 5], "jpg", "JPEG", "", f.size)

    def zero_byte(self):
        return ImageFile("zero_byte", b"", "jpg", "", "")


def encode(img, fmt, quality=None):
    buf = io.BytesIO()
    if fmt == "JPEG":
        img.save(buf, **(JPEG | ({"quality": quality} if quality else {})))
    else:
        img.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def random_colour(r, lo=0, hi=255):
    return tuple(r.randint(lo, hi) for _ in range(3))


def gradient(w, h, c0, c1, direction):
    t = np.linspace(0.0, 1.0, w if direction == "h" else h, dtype=np.float32)
    ramp = (1 - t)[:, None] * np.array(c0, np.float32) + t[:, None] * np.array(c1, np.float32)  # (L, 3)
    ramp = ramp.round().astype(np.uint8)
    arr = np.broadcast_to(ramp[None, :, :], (h, w, 3)) if direction == "h" else np.broadcast_to(ramp[:, None, :], (h, w, 3))
    return Image.fromarray(np.ascontiguousarray(arr), "RGB")


def tint(img, colour):
    """Grey texture -> busy coloured photo no brighter than `colour` (max 190), so the light text (>= 230)
    stays the only thing above 200: Tesseract's global threshold merges text and background, a light-text
    threshold separates them."""
    gray = np.asarray(img.convert("L"), dtype=np.float32)[:, :, None] / 255.0   # (H, W, 1)
    gray = (gray - gray.min()) / max(float(gray.max() - gray.min()), 1e-6)     # full contrast
    arr = (0.3 + 0.7 * gray) * np.array(colour, np.float32)
    return Image.fromarray(arr.clip(0, 190).astype(np.uint8), "RGB")


def split_lines(words, r):
    tokens = words.split()
    if len(tokens) >= 3 and r.random() < 0.6:
        cut = (len(tokens) + 1) // 2
        return [" ".join(tokens[:cut]), " ".join(tokens[cut:])]
    return [" ".join(tokens)]


# ---------------------------------------------------------------------------------------------- posts

@dataclass
class Post:
    kind: str
    reason: str = ""            # "" when the post is expected to be kept
    tag: dict | None = None     # the primary frequent hashtag's topic
    mode: str = "words"         # mid | words | related | generic | short | foreign (how the text was made)
    text: str = ""
    lang: str = "en"
    hashtags: list = field(default_factory=list)   # as written, in text order
    images: list = field(default_factory=list)
    media_url: bool = True
    duplicate_of: str = ""
    retweet_of: str = ""
    author: int = 0
    extra_rare: bool = False    # also carries a rare hashtag
    id: str = ""
    created_at: str = ""


class CorpusWriter:
    def __init__(self, seed, n_posts):
        self.seed, self.n_posts = seed, n_posts
        self.r = random.Random(seed)
        self.topics = load_topics()
        self.tags = self.topics["frequent"]
        self.images = ImageMaker(random.Random(seed + 1))
        self.seen_texts = set()   # normalized word sequences, unique across intended-distinct posts
        names = [(a, b) for a in ("sunny", "river", "maple", "pixel", "nova", "cedar", "lucky", "misty")
                 for b in ("fox", "owl", "bee", "lark", "moth", "wren")]
        self.users = [{"id": str(10_000_000 + 7919 * i), "username": f"{a}_{b}{i}", "name": f"{a.title()} {b.title()}"}
                      for i, (a, b) in enumerate(names)]

    # ----- planning
    def plan(self):
        r = self.r
        n_edges = sum(n for n, _ in REJECTIONS.values())
        n_kept = self.n_posts - n_edges
        if n_kept < MIN_POSTS_PER_TAG * len(self.tags):
            raise SystemExit(f"--posts must be at least {n_edges + MIN_POSTS_PER_TAG * len(self.tags)} "
                             f"({n_edges} edge cases + {MIN_POSTS_PER_TAG} kept posts for each of the "
                             f"{len(self.tags)} frequent hashtags)")
        # long tail: a floor per hashtag plus a Zipf share of the rest, hashtag order shuffled once per seed
        order = list(range(len(self.tags)))
        r.shuffle(order)
        weights = [1.0 / (rank + 1) ** 1.1 for rank in range(len(order))]
        extra = n_kept - MIN_POSTS_PER_TAG * len(order)
        counts = {i: MIN_POSTS_PER_TAG + int(extra * w / sum(weights)) for i, w in zip(order, weights)}
        counts[order[0]] += n_kept - sum(counts.values())

        kept = []
        for i, n in counts.items():
            tag = self.tags[i]
            image_only_share = 0.4 if tag["image"] != "none" else 0.0
            for _ in range(n):
                if r.random() < image_only_share:
                    kind = "image_photo" if tag["image"].startswith("photo:") else \
                        ("image_ocr_outline" if r.random() < 0.35 else "image_ocr")
                    kept.append(Post(kind, tag=tag, mode="generic"))
                else:
                    kept.append(Post("text", tag=tag, mode=r.choice(("mid", "words", "words", "related"))))
        r.shuffle(kept)
        text_posts = [p for p in kept if p.kind == "text"]
        for p, kind in zip(text_posts, [k for k, n in KEPT_IMAGE_EDGES.items() for _ in range(n)]):
            p.kind = kind
        for p in text_posts[-RARE_PLUS_FREQUENT:]:
            p.extra_rare = True

        edges = []
        for kind, (n, reason) in REJECTIONS.items():
            for _ in range(n):
                edges.append(Post(kind, reason=reason, tag=self.tags[r.choice(order[:20])],
                                  mode=r.choice(("mid", "words", "related"))))
        # duplicates need originals before them: edges go into the later 80% of the stream, except the
        # malformed line, which lives in the flattened file among the newest posts
        posts = kept[:]
        for p in edges:
            if p.kind != "malformed_json":
                posts.insert(r.randint(len(kept) // 5, len(posts)), p)
        for p in edges:
            if p.kind == "malformed_json":
                posts.insert(len(posts) - r.randint(5, 30), p)
        return posts

    # ----- text
    def fill(self, template):
        r, emoji = self.r, self.topics["emoji"]
        out = template
        while "{" in out:
            out = (out.replace("{emoji}", r.choice(emoji), 1).replace("{num}", str(r.randint(2, 500)), 1)
                   .replace("{user}", r.choice(self.users)["username"], 1)
                   .replace("{link}", "https://t.co/" + tco(r), 1))
        return out

    def compose(self, post, trailing):
        """The post's text: opener + body + closer + trailing hashtags, unique after normalization."""
        r, tag = self.r, post.tag
        for _ in range(200):
            if post.mode == "generic":
                body = r.choice(self.topics["generic"])
            else:
                body = r.choice(tag[post.mode]).replace("{tag}", "#" + written_form(tag, r))
            opener, closer = r.choice(self.topics["openers"]), r.choice(self.topics["closers"])
            if opener.endswith((",", ":")) and not body.startswith(("I ", "{")):
                body = body[0].lower() + body[1:]
            text = " ".join(s for s in (opener, self.fill(body), self.fill(closer)) if s)
            text += "".join(" #" + t for t in trailing)
            key = tuple(text_words(text))
            if post.mode in ("generic", "related") and content_words(tag["segmentation"]) & set(key):
                continue   # an image-only or related post must not name its keyphrase
            if key not in self.seen_texts:
                self.seen_texts.add(key)
                return text
        raise RuntimeError("ran out of distinct texts; add templates to data/sample/topics.json")

    def other_tags(self, post, k):
        pool = [t for t in self.tags if t is not post.tag]
        return [written_form(t, self.r) for t in self.r.sample(pool, k)]

    # ----- building
    def build(self):
        r = self.r
        posts = self.plan()
        originals = []          # kept posts with one distinct image, candidates for duplicates
        start = EPOCH
        rare = self.topics["rare"]
        rare_uses = {t["tag"]: 0 for t in rare}
        for seq, post in enumerate(posts):
            start += timedelta(seconds=r.randint(200, 4000))
            post.id = snowflake(start, seq)
            post.created_at = start.strftime("%Y-%m-%dT%H:%M:%S.000Z")
            post.author = r.randrange(len(self.users))
            post.media_url = r.random() < MEDIA_URL_SHARE
            kind = post.kind
            if kind.startswith("duplicate_"):   # a repost of an earlier post, under the same hashtag
                original = r.choice([p for p in originals[-60:] if kind != "duplicate_text" or not p.media_url])
                post.duplicate_of, post.tag = original.id, original.tag
            primary = written_form(post.tag, r)
            trailing = [] if post.mode == "mid" else [primary]
            if post.kind == "text" and r.random() < SECONDARY_TAG_SHARE:   # image-only posts keep one keyphrase
                trailing += self.other_tags(post, 1)
            if post.extra_rare:
                trailing.append(self.least_used_rare(rare, rare_uses))

            if kind == "rare_hashtag_only":
                post.mode, trailing = "generic", [self.least_used_rare(rare, rare_uses)]
            elif kind == "too_many_hashtags":
                trailing = [primary] + self.other_tags(post, r.randint(5, 6))
            elif kind == "too_few_tokens":
                post.mode, post.media_url = "short", False
            elif kind == "not_english":
                post.mode = "foreign"

            if kind == "duplicate_text":
                post.text, post.media_url = original.text, False
            elif post.mode == "short":
                text = self.fill(self.topics["short"][posts_index(post, posts, "too_few_tokens")])
                post.text = f"{text} #{primary}"
            elif post.mode == "foreign":
                lang, sentence = self.topics["foreign"][posts_index(post, posts, "not_english")]
                post.lang, post.text = lang, f"{self.fill(sentence)} {r.choice(self.topics['emoji'])} #{primary}"
            else:
                post.text = self.compose(post, trailing)
            if kind == "retweet":
                source = r.choice(self.users)
                post.text = f"RT @{source['username']}: {post.text}"
                post.retweet_of = snowflake(start - timedelta(days=r.randint(1, 30)), seq)

            post.images = self.make_images(post, original if kind.startswith("duplicate_image") else None)
            if post.media_url and post.images:
                post.text += " https://t.co/" + tco(r)
            post.hashtags = re.findall(r"(?<![\w&])#(\w+)", post.text)
            if kind in ("text", "image_photo", "image_ocr") and len(post.images) == 1 and not post.retweet_of:
                originals.append(post)
        return posts

    def new_posts(self):
        """NEW_POSTS as Posts with text and at most one image, without hashtags: texts distinct from the archive's,
        images DHASH_MARGIN bits from every archive image. Called after the archive is written (it draws from
        the same random streams, so the archive stays what it was)."""
        tags = {t["tag"]: t for t in self.tags}
        posts = []
        for number, (tag_name, kind) in enumerate(NEW_POSTS, start=1):
            tag = tags[tag_name]
            mode = kind if kind in ("words", "related") else "generic"
            post = Post(kind, tag=tag, mode=mode, id=f"new-{number:02d}")
            post.text = self.compose(post, [])
            photo = tag["image"][len("photo:"):] if tag["image"].startswith("photo:") else ""
            if kind == "image_photo" or (kind == "words" and photo):
                post.images = [self.images.photo_image(photo)]
            elif kind.startswith("image_ocr"):
                post.images = [self.images.text_image(tag["segmentation"], tag["poster"],
                                                      outlined=kind == "image_ocr_outline")]
            elif kind == "related":
                post.images = [self.images.generic_image()]
            posts.append(post)
        return posts

    def least_used_rare(self, rare, uses):
        t = min(rare, key=lambda t: (uses[t["tag"]], t["tag"]))
        uses[t["tag"]] += 1
        return t["written"][0]

    def make_images(self, post, original):
        im, tag, kind = self.images, post.tag, post.kind
        photo = tag["image"][len("photo:"):] if tag["image"].startswith("photo:") else ""
        if kind in ("no_image", "malformed_json"):
            return []
        if original is not None:
            key, img = media_key(original, 0), original.images[0]
            return [im.exact_duplicate(img, key) if kind.endswith("exact") else im.near_duplicate(img, key)]
        if kind == "several_images":
            return [im.generic_image() for _ in range(self.r.randint(2, 4))]
        if kind == "image_ocr":
            return [im.text_image(tag["segmentation"], tag["poster"], outlined=False)]
        if kind == "image_ocr_outline":
            return [im.text_image(tag["segmentation"], tag["poster"], outlined=True)]
        if kind == "grayscale_image":
            return [im.grayscale_image()]
        if kind == "cmyk_image":
            return [im.cmyk_image(photo)]
        if kind == "palette_image":
            return [im.palette_image()]
        if kind == "png_named_jpg":
            return [im.png_named_jpg()]
        if kind == "truncated_jpeg":
            return [im.truncated_jpeg()]
        if kind == "zero_byte_image":
            return [im.zero_byte()]
        if kind == "rare_hashtag_only":
            return [im.generic_image()]
        return [im.photo_image(photo) if photo else im.generic_image()]


def posts_index(post, posts, kind):
    return [p for p in posts if p.kind == kind].index(post)


def written_form(tag, r):
    forms = tag["written"]
    return forms[0] if len(forms) == 1 or r.random() < 0.75 else r.choice(forms[1:])


def tco(r):
    return "".join(r.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789") for _ in range(10))


def media_key(post, i):
    return f"3_{post.id}{i}"


# ---------------------------------------------------------------------------------------------- JSON

def entities(text, users_by_name, media_keys):
    """API v2 entities with code-point offsets (end exclusive), found in the final text."""
    ent = {}
    tags = [{"start": m.start(), "end": m.end(), "tag": m.group(1)} for m in re.finditer(r"(?<![\w&])#(\w+)", text)]
    mentions = [{"start": m.start(), "end": m.end(), "username": m.group(1),
                 "id": users_by_name.get(m.group(1), {}).get("id", "")} for m in re.finditer(r"(?<!\w)@(\w+)", text)]
    urls = []
    links = list(re.finditer(r"https://t\.co/\w+", text))
    for j, m in enumerate(links):
        u = {"start": m.start(), "end": m.end(), "url": m.group(0)}
        if media_keys and j == len(links) - 1 and m.end() == len(text):
            u |= {"expanded_url": f"https://twitter.example.invalid/i/status/photo/{media_keys[0]}",
                  "display_url": "pic.twitter.com/" + m.group(0)[-10:], "media_key": media_keys[0]}
        else:
            u |= {"expanded_url": f"https://blog.example.invalid/p/{m.group(0)[-10:]}",
                  "display_url": f"blog.example.invalid/p/{m.group(0)[-10:]}"}
        urls.append(u)
    for name, items in (("hashtags", tags), ("mentions", mentions), ("urls", urls)):
        if items:
            ent[name] = items
    return ent


def tweet_json(post, users, users_by_name):
    keys = [media_key(post, i) for i in range(len(post.images))]
    t = {"id": post.id, "text": post.text, "lang": post.lang, "author_id": users[post.author]["id"],
         "created_at": post.created_at, "conversation_id": post.id,
         "public_metrics": {"retweet_count": 0, "reply_count": 0, "like_count": len(post.text) % 17,
                            "quote_count": 0},
         "possibly_sensitive": False}
    ent = entities(post.text, users_by_name, keys)
    if ent:
        t["entities"] = ent
    if keys:
        t["attachments"] = {"media_keys": keys}
    if post.retweet_of:
        t["referenced_tweets"] = [{"type": "retweeted", "id": post.retweet_of}]
    return t


def media_json(post):
    out = []
    for i, img in enumerate(post.images):
        key = media_key(post, i)
        w, h = img.size
        out.append({"media_key": key, "type": "photo", "url": f"https://pbs.example.invalid/media/{key}.{img.ext}",
                    "width": w, "height": h})
    return out


def twarc_meta(query_page):
    return {"url": f"https://api.twitter.com/2/tweets/search/all?query=has%3Aimages+has%3Ahashtags&page={query_page}",
            "version": "2.13.0", "retrieved_at": "2019-12-31T23:59:59+00:00"}


def write_corpus(out_dir, seed=DEFAULT_SEED, n_posts=DEFAULT_POSTS):
    writer = CorpusWriter(seed, n_posts)
    posts = writer.build()
    users, r = writer.users, writer.r
    users_by_name = {u["username"]: u for u in users}
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".tmp-", dir=out_dir.parent))
    try:
        (tmp / "media").mkdir()
        n_flat = max(40, len(posts) // 8)
        paged, flat = posts[:-n_flat], posts[-n_flat:]
        location = {}   # post id -> (file, 1-based line)
        # pages: two files of pages with 20-100 tweets each, chronological
        half = len(paged) // 2
        for fi, chunk in enumerate((paged[:half], paged[half:]), start=1):
            name = f"search-page-{fi:02d}.jsonl"
            lines, i = [], 0
            while i < len(chunk):
                page = chunk[i:i + r.randint(20, 100)]
                i += len(page)
                data = [tweet_json(p, users, users_by_name) for p in page]
                media = [m for p in page for m in media_json(p)]
                authors = sorted({p.author for p in page})
                resp = {"data": data, "includes": {"media": media, "users": [users[a] for a in authors]},
                        "meta": {"result_count": len(data), "newest_id": page[-1].id, "oldest_id": page[0].id},
                        "__twarc": twarc_meta(len(lines) + 1)}
                if i < len(chunk) or fi == 1:
                    resp["meta"]["next_token"] = f"b26v89c19zqg8o3f{fi}{len(lines):04d}"
                lines.append(json.dumps(resp, sort_keys=True))
                location |= {p.id: (name, len(lines)) for p in page}
            (tmp / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
        lines = []
        for p in flat:
            t = tweet_json(p, users, users_by_name)
            t["author"] = users[p.author]
            if p.images:
                t["attachments"]["media"] = media_json(p)
            t["__twarc"] = twarc_meta(0)
            line = json.dumps(t, sort_keys=True, ensure_ascii=False)
            if p.kind == "malformed_json":
                line = line[: len(line) // 2]   # a line cut off mid-object, as a crashed writer leaves it
            lines.append(line)
            location[p.id] = ("tweets-flat.jsonl", len(lines))
        (tmp / "tweets-flat.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        new_posts = writer.new_posts()
        write_new_posts(tmp / NEW_POSTS_DIR, new_posts)

        for p in posts:
            for i, img in enumerate(p.images):
                (tmp / "media" / f"{media_key(p, i)}.{img.ext}").write_bytes(img.data)
        expected = expected_json(writer, posts, location)
        expected["new_posts"] = {p.id: {"kind": p.kind, "hashtag": p.tag["tag"], "keyphrase": p.tag["segmentation"],
                                        "image": new_post_image(p), "text": html.unescape(p.text)}
                                for p in new_posts}
        (tmp / "expected.json").write_text(json.dumps(expected, sort_keys=True, indent=1, ensure_ascii=False) + "\n",
                                           encoding="utf-8")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return expected


def new_post_image(post):
    """The image path of a new post as its posts.jsonl row gives it (relative to the file), or None."""
    return f"images/{post.id}.{post.images[0].ext}" if post.images else None


def write_new_posts(directory, posts):
    (directory / "images").mkdir(parents=True)
    rows = []
    for p in posts:
        row = {"id": p.id, "text": html.unescape(p.text)}   # plain text, not the API's HTML-escaped form
        if p.images:
            row["image"] = new_post_image(p)
            (directory / row["image"]).write_bytes(p.images[0].data)
        rows.append(json.dumps(row, ensure_ascii=False, sort_keys=True))
    (directory / "posts.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")


def expected_json(writer, posts, location):
    topics = {t["tag"]: t for t in writer.tags}
    rare = {t["tag"]: t for t in writer.topics["rare"]}
    out_posts, counts_all, counts_kept = {}, {}, {}
    for p in posts:
        tags = [h.lower() for h in p.hashtags]
        keyphrases = list(dict.fromkeys(topics[t]["segmentation"] for t in tags if t in topics))
        words = set(text_words(p.text))
        trailing = trailing_hashtags(p.text)
        record = {
            "file": location[p.id][0], "line": location[p.id][1],
            "kind": p.kind, "expect": "rejected" if p.reason else "kept", "reason": p.reason or None,
            "text_mode": p.mode, "lang": p.lang, "hashtags": p.hashtags, "trailing_hashtags": trailing,
            "mid_hashtags": [h for h in p.hashtags if h not in trailing],
            "keyphrases": keyphrases, "rare_hashtags": [t for t in tags if t in rare],
            "keyphrase_in_text": {k: set(k.split()) <= words for k in keyphrases},
            "image_only": p.kind in ("image_photo", "image_ocr", "image_ocr_outline"),
            "duplicate_of": p.duplicate_of or None, "retweet_of": p.retweet_of or None,
            "images": [{"media_key": media_key(p, i), "file": f"media/{media_key(p, i)}.{img.ext}",
                        "kind": img.kind, "format": img.fmt or None, "mode": img.mode or None,
                        "width": img.size[0], "height": img.size[1], "bytes": len(img.data),
                        "sha256": hashlib.sha256(img.data).hexdigest(),
                        "dhash": f"{img.dhash:016x}" if img.dhash is not None else None,
                        "photo": img.category or None, "rendered_text": img.words or None,
                        "duplicate_of": img.duplicate_of or None}
                       for i, img in enumerate(p.images)],
        }
        out_posts[p.id] = record
        for t in set(tags) if p.kind != "malformed_json" else ():   # counts over the readable posts
            counts_all[t] = counts_all.get(t, 0) + 1
            if not p.reason:
                counts_kept[t] = counts_kept.get(t, 0) + 1
    by_kind, by_reason = {}, {}
    for rec in out_posts.values():
        by_kind[rec["kind"]] = by_kind.get(rec["kind"], 0) + 1
        if rec["reason"]:
            by_reason[rec["reason"]] = by_reason.get(rec["reason"], 0) + 1
    return {
        "_about": EXPECTED_ABOUT,
        "generator": {"version": GENERATOR_VERSION, "seed": writer.seed, "posts": writer.n_posts,
                      "dhash_margin": DHASH_MARGIN, "near_duplicate_bits": NEAR_DUPLICATE_BITS,
                      "fonts": writer.images.font_note},
        "reading_order": sorted({f for f, _ in location.values()}),
        "hashtags": {
            **{t: {"segmentation": d["segmentation"], "written": d["written"], "frequent": True,
                   "image": d["image"], "posts_all": counts_all.get(t, 0), "posts_kept": counts_kept.get(t, 0)}
               for t, d in topics.items()},
            **{t: {"segmentation": d["segmentation"], "written": d["written"], "frequent": False, "image": "none",
                   "posts_all": counts_all.get(t, 0), "posts_kept": counts_kept.get(t, 0)}
               for t, d in rare.items()}},
        "counts": {"posts": len(posts), "kept": sum(1 for p in posts if not p.reason),
                   "rejected": by_reason, "by_kind": by_kind},
        "posts": out_posts,
    }


EXPECTED_ABOUT = (
    "Ground truth of the sample corpus. posts: per tweet id, the file and 1-based line holding it, its kind, "
    "expect (kept|rejected) and reason (one defect per rejected post, see REJECTIONS in make_sample_corpus.py), "
    "its hashtags as written, which of them are trailing (the targets, removed from the text) or mid-post, its "
    "keyphrases (segmented frequent hashtags; rare ones are listed apart), whether each keyphrase's words are in the "
    "text, whether only the image tells the keyphrase, and its images (kind, real format and mode, sha256, 64-bit "
    "dHash, the photo shown or the text rendered, and the original of a duplicate). hashtags: per lowercase "
    "hashtag, its segmentation, written forms and how many readable posts carry it (all / expected kept). "
    "Reading order is the files sorted by name, lines in order; it is also chronological. new_posts: per id of "
    "new-posts/posts.jsonl (posts never in the archive), its kind, the hashtag and keyphrase its topic has, its "
    "image path and text.")


def trailing_hashtags(text):
    """Hashtags after the last word that is not a hashtag, URL or emoji (they are the targets, not the text)."""
    out = []
    for tok in reversed(text.split()):
        if tok.startswith("#"):
            out.append(tok[1:])
        elif tok.startswith("https://") or not re.search(r"\w", tok):
            continue
        else:
            break
    return out[::-1]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path, help="directory to write (replaced if it exists)")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    min_posts = sum(n for n, _ in REJECTIONS.values()) + MIN_POSTS_PER_TAG * len(load_topics()["frequent"])
    ap.add_argument("--posts", type=int, default=DEFAULT_POSTS, help=f"number of posts (at least {min_posts})")
    args = ap.parse_args(argv)
    expected = write_corpus(args.out, args.seed, args.posts)
    c = expected["counts"]
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(f"wrote {c['posts']} posts to {args.out} ({size / 1e6:.1f} MB): {c['kept']} expected kept, "
          f"{c['posts'] - c['kept']} expected rejected {json.dumps(c['rejected'], sort_keys=True)}; "
          f"{len(expected['new_posts'])} new posts to tag in {args.out / NEW_POSTS_DIR / 'posts.jsonl'}")


if __name__ == "__main__":
    main()
