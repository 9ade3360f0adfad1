"""Write the small, non-square test images that the fixtures and tests use.

Deterministic (fixed seed). Run once; the images are committed:
    python scripts/make_test_images.py tests/fixtures/images
- wide.jpg  200x120 RGB JPEG (landscape; AnyRes picks a 1x2 grid)
- tall.png   90x250 RGBA PNG with partial transparency (portrait; HF composites alpha on white)
- gray.png  150x150 8-bit grayscale PNG (square; exercises the grey -> RGB conversion)
"""
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def textured(w, h, seed):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([
        128 + 100 * np.sin(x / 9.0 + seed),
        128 + 100 * np.cos(y / 7.0),
        (x * 255 // max(w - 1, 1) + y * 3) % 256,
    ], axis=-1)
    noise = rng.integers(-30, 31, size=(h, w, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def main(out):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    img = Image.fromarray(textured(200, 120, 1), "RGB")
    d = ImageDraw.Draw(img)
    d.rectangle([20, 20, 80, 90], fill=(220, 30, 30))
    d.ellipse([110, 30, 180, 100], fill=(30, 60, 220))
    img.save(out / "wide.jpg", quality=90)

    rgb = textured(90, 250, 2)
    alpha = np.full((250, 90), 255, np.uint8)
    alpha[:60, :] = 128
    alpha[200:, 40:] = 0
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(out / "tall.png")

    g = textured(150, 150, 3)[..., 0]
    Image.fromarray(g, "L").save(out / "gray.png")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/images")
