"""Image validation (decode once, under a pixel cap) and the perceptual hash used to find near-duplicates.

Paper rule: a post keeps its image only if it is a decodable colour JPEG. Decisions made here:
- the format comes from the bytes (Pillow's own identification), never from a file name or URL;
- with `require_jpeg` (the default, the paper's rule) any other format is rejected with reason `not_jpeg`,
  e.g. a PNG renamed `.jpg`; without it, PNG/WebP/GIF/... are accepted after conversion to RGB;
- CMYK, palette, RGBA and other colour modes are converted to RGB; grayscale is rejected (`grayscale`): modes
  L, 1, LA, I, F (and 16-bit variants), and RGB images whose three channels are equal (to within
  `gray_tolerance`, since JPEG decoding of a gray image can leave channels one or two levels apart).
- A phone's multi-picture JPEG (MPO: a JPEG followed by more pictures) is a JPEG: its first picture is used,
  by these checks and by every feature stage, which read it through Pillow the same way.
- The EXIF orientation tag is ignored: pixels are used as stored, here and in every feature stage. Images
  fetched from the platform carry no such tag (it applies the rotation and strips EXIF on upload), and the
  authors' feature extraction read images the same way; rotating only some images would change what
  features mean for them.
- An image under `MIN_SIDE` pixels a side (a 1x1 tracking pixel, a placeholder) is rejected (`too_small`):
  it shows nothing the features can use, and its dHash cannot tell it from any other tiny image.
- Memory is bounded by the image's reduced size, not its full size, where it can be: an image over
  `CHECK_SIDE` pixels a side is checked on a copy reduced to about that size (a JPEG is decoded at 1/2, 1/4
  or 1/8 scale straight from its bytes, which still reads every byte, so truncation is still caught; other
  formats are decoded in full, within `max_pixels`, then reduced). The feature stages read images through
  `open_rgb`, which reduces an image over `LOAD_SIDE` pixels a side the same way on load.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

MIN_SIDE = 8  # dHash compares a 9x8 grid: below this an image has nothing to compare
CHECK_SIDE = 1024  # larger images are checked (colour, dHash) on a copy reduced to about this size
LOAD_SIDE = 4096  # feature stages read images reduced to at most this many pixels a side
JPEG_FORMATS = {"JPEG", "MPO"}  # Pillow calls a multi-picture JPEG "MPO"
GRAYSCALE_MODES = {"L", "1", "LA", "La", "I", "F", "I;16", "I;16L", "I;16B", "I;16N"}


class ImageRejected(Exception):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass
class ValidImage:
    image: Image.Image  # RGB, decoded; reduced to about CHECK_SIDE pixels a side when larger
    format: str  # Pillow's name of the format found in the bytes, e.g. "JPEG"
    width: int
    height: int


def validate_image(data: bytes, max_pixels: int, require_jpeg: bool, gray_tolerance: int = 2) -> ValidImage:
    """Decode `data` fully and return it as RGB, or raise `ImageRejected` with the reason."""
    if not data:
        raise ImageRejected("empty_file", "0 bytes")
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageRejected("not_an_image", f"{len(data)} bytes, format not recognised") from None
    except Image.DecompressionBombError as err:
        raise ImageRejected("too_large", str(err)) from None
    except (OSError, SyntaxError, ValueError) as err:
        # A known format whose header is cut short.
        raise ImageRejected("truncated", f"header: {err}") from None
    width, height = img.size
    # Checked before decoding: a small file can declare an enormous canvas (decompression bomb).
    if width * height > max_pixels:
        raise ImageRejected("too_large", f"{width}x{height} pixels > {max_pixels}")
    if width == 0 or height == 0:
        raise ImageRejected("not_an_image", f"{width}x{height} pixels")
    if width < MIN_SIDE or height < MIN_SIDE:
        raise ImageRejected("too_small", f"{width}x{height} pixels, under {MIN_SIDE} a side")
    if require_jpeg and img.format not in JPEG_FORMATS:
        raise ImageRejected("not_jpeg", f"the bytes are {img.format}")
    scale = CHECK_SIDE / max(width, height)
    if scale < 1:
        img.draft(None, (max(1, round(width * scale)), max(1, round(height * scale))))  # a no-op unless JPEG
    try:
        img.load()
    except Image.DecompressionBombError as err:
        raise ImageRejected("too_large", str(err)) from None
    except (OSError, SyntaxError, ValueError) as err:
        # Pillow reports a file cut short as "image file is truncated" (OSError).
        raise ImageRejected("truncated", str(err)) from None
    if img.mode in GRAYSCALE_MODES:
        raise ImageRejected("grayscale", f"mode {img.mode}")
    rgb = img if img.mode == "RGB" else img.convert("RGBA" if "transparency" in img.info else "RGB").convert("RGB")
    if max(rgb.size) > CHECK_SIDE:
        rgb.thumbnail((CHECK_SIDE, CHECK_SIDE))
    pixels = np.asarray(rgb, dtype=np.int16)
    if (np.abs(pixels[..., 0] - pixels[..., 1]).max() <= gray_tolerance
            and np.abs(pixels[..., 1] - pixels[..., 2]).max() <= gray_tolerance):
        raise ImageRejected("grayscale", f"{img.mode} image with equal channels")
    return ValidImage(image=rgb, format=img.format or "", width=width, height=height)


def open_rgb(path, max_side: int = LOAD_SIDE) -> Image.Image:
    """A stored image as RGB for a feature stage, at most `max_side` pixels a side: larger ones (none of the
    platform's, which serves at most 4,096) are reduced on load, a JPEG straight from its bytes (draft), so a
    huge image never costs its full decoded size. Smaller images are exactly `Image.open(path).convert("RGB")`."""
    with Image.open(path) as image:
        width, height = image.size
        scale = max_side / max(width, height)
        if scale < 1:
            image.draft("RGB", (max(1, round(width * scale)), max(1, round(height * scale))))
            image.thumbnail((max_side, max_side))
        return image.convert("RGB")


def dhash(image: Image.Image) -> int:
    """64-bit difference hash: grayscale, resize to 9x8, one bit per horizontally adjacent pixel pair."""
    small = np.asarray(image.convert("L").resize((9, 8), Image.Resampling.LANCZOS), dtype=np.int16)
    bits = (small[:, 1:] > small[:, :-1]).flatten()
    return int(sum(1 << i for i, bit in enumerate(bits) if bit))


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


class NearDuplicateIndex:
    """Finds a stored hash within `max_distance` bits of a query without comparing against all of them.

    Pigeonhole: split the 64 bits into `max_distance + 1` bands; two hashes at distance <= max_distance agree
    exactly on at least one band, so only hashes sharing a band value are candidates (exact, not approximate).
    """

    def __init__(self, max_distance: int = 4):
        self.max_distance = max_distance
        n_bands = max_distance + 1
        edges = [round(64 * i / n_bands) for i in range(n_bands + 1)]
        self.bands = [(lo, (1 << (hi - lo)) - 1) for lo, hi in zip(edges, edges[1:])]
        self.tables: list[dict[int, list[tuple[int, str]]]] = [{} for _ in self.bands]

    def find(self, h: int) -> str | None:
        """The key of the first stored hash within the distance, or None."""
        for (shift, mask), table in zip(self.bands, self.tables):
            for other, key in table.get((h >> shift) & mask, ()):
                if hamming(h, other) <= self.max_distance:
                    return key
        return None

    def add(self, h: int, key: str) -> None:
        for (shift, mask), table in zip(self.bands, self.tables):
            table.setdefault((h >> shift) & mask, []).append((h, key))
