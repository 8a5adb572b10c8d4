"""Rendered-text test images for OCR, made offline (scikit-image's bundled photos, Pillow's bundled font)."""
from __future__ import annotations

import skimage.data
from PIL import Image, ImageDraw, ImageFont

# (style, lines of text): dark on plain background, dark on a photo's light band, light with a dark outline over a photo.
CASES = [
    ("plain", ["wildflower hour", "spring garden walk"]),
    ("plain", ["monday motivation", "never give up today"]),
    ("banner", ["throwback thursday", "summer holiday memories"]),
    ("outline", ["national coffee day", "morning brew time"]),
    ("outline", ["happy caturday", "lazy sunday afternoon"]),
    ("outline", ["world space week", "rocket launch tonight"]),
]
PHOTOS = {"national": skimage.data.coffee, "happy": skimage.data.chelsea, "world": skimage.data.rocket,
          "throwback": skimage.data.astronaut}


def render(style: str, lines: list[str], size=(640, 440)) -> Image.Image:
    font = ImageFont.load_default(size=44)
    if style == "plain":
        image = Image.new("RGB", size, (250, 248, 240))
    else:
        image = Image.fromarray(PHOTOS[lines[0].split()[0]]()).convert("RGB").resize(size)
    draw = ImageDraw.Draw(image)
    for i, line in enumerate(lines):
        xy = (36, 48 + 110 * i)
        if style == "banner":
            box = draw.textbbox(xy, line, font=font)
            draw.rectangle((box[0] - 8, box[1] - 8, box[2] + 8, box[3] + 8), fill=(255, 255, 255))
            draw.text(xy, line, font=font, fill=(20, 20, 20))
        elif style == "outline":  # meme style: top and bottom captions
            xy = (36, 20 if i == 0 else size[1] - 76)
            draw.text(xy, line.upper(), font=font, fill="white", stroke_width=3, stroke_fill="black")
        else:
            draw.text(xy, line, font=font, fill=(30, 30, 60))
    return image


def photo_without_text(size=(320, 240)) -> Image.Image:
    return Image.fromarray(skimage.data.astronaut()).convert("RGB").resize(size)


def write_cases(directory) -> list[tuple[str, str]]:
    """Write the rendered images as JPEGs; returns (path, expected text) pairs."""
    out = []
    for i, (style, lines) in enumerate(CASES):
        path = f"{directory}/ocr-{i}-{style}.jpg"
        render(style, lines).save(path, quality=92)
        out.append((path, " ".join(lines)))
    return out





def leptonica_noise_image() -> Image.Image:
    """A crop of scikit-image's Hubble photo on which Leptonica, inside Tesseract 5, writes
    `Error in boxClipToRectangle` lines to stderr (found by search; most photos print nothing)."""
    photo = Image.fromarray(skimage.data.hubble_deep_field()).convert("RGB")   # 1000 x 872
    left, top = int(0.05 * photo.width), int(0.05 * photo.height)
    width, height = int(0.6 * photo.width), int(0.6 * photo.height)
    crop = photo.crop((left, top, left + width, top + height))
    return crop.resize((320, int(320 * height / width)))
