"""Photos with words in them, made with Pillow: signs, banners and notes on textured backgrounds, at several
text sizes and angles (the OCR tests make theirs here; nothing is downloaded)."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont


def texture(w: int, h: int, seed: int) -> Image.Image:
    """A photo-like background: smooth colour gradients with fine noise, no letters."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = np.zeros((h, w, 3), np.float32)
    for c in range(3):
        a, b, p = rng.uniform(0.2, 1.0, 3)
        out[..., c] = 120 + 80 * np.sin(xx / w * 6.28 * a + p * 6) * np.cos(yy / h * 6.28 * b)
    out += rng.normal(0, 12, out.shape)
    img = Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))
    return img.filter(ImageFilter.GaussianBlur(1.2))


def text_photo(text: str, size: tuple[int, int] = (1200, 900), font_px: int = 64, angle: float = 0.0,
               seed: int = 0, background: Image.Image | None = None, sign: bool = True) -> Image.Image:
    """`text` (lines split on newlines) on a background: on a light sign with a border when `sign`, else
    straight onto the background in a colour that stands out; turned by `angle` degrees."""
    img = (background.convert("RGB").resize(size) if background is not None else texture(*size, seed)).copy()
    font = ImageFont.load_default(size=font_px)
    layer = Image.new("RGBA", size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    lines = text.split("\n")
    boxes = [draw.textbbox((0, 0), line, font=font) for line in lines]
    tw = max(b[2] - b[0] for b in boxes)
    line_h = int(font_px * 1.25)
    th = line_h * len(lines)
    x0, y0 = (size[0] - tw) // 2, (size[1] - th) // 2
    if sign:
        pad = font_px // 2
        draw.rectangle((x0 - pad, y0 - pad, x0 + tw + pad, y0 + th + pad), fill=(245, 240, 225, 255),
                       outline=(40, 40, 40, 255), width=max(2, font_px // 12))
        ink = (20, 20, 30, 255)
    else:
        ink = (255, 255, 255, 255)
    for i, line in enumerate(lines):
        draw.text((x0, y0 + i * line_h), line, font=font, fill=ink,
                  stroke_width=0 if sign else max(1, font_px // 16), stroke_fill=(0, 0, 0, 255))
    if angle:
        layer = layer.rotate(angle, resample=Image.Resampling.BICUBIC, center=(size[0] / 2, size[1] / 2))
    img.paste(layer, (0, 0), layer)
    return img
