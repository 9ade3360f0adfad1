"""Pillow reference outputs for `stic::image::corrupt` (STIC's image corruptions).

The official STIC code corrupts PIL images with torchvision (stic/generate_pref.py:48-53):
`T.Resize(size=20)` or `T.ColorJitter(brightness=.5, hue=.3)`. On PIL input torchvision's
functional ops are thin wrappers over Pillow (torchvision/transforms/_functional_pil.py):
  adjust_brightness  ImageEnhance.Brightness(img).enhance(f)
  adjust_contrast    ImageEnhance.Contrast(img).enhance(f)
  adjust_saturation  ImageEnhance.Color(img).enhance(f)
  adjust_hue         h, s, v = img.convert("HSV").split(); h += uint8(f * 255) (wrapping);
                     Image.merge("HSV", (h, s, v)).convert("RGB")
  resize(size=int)   shorter side -> size, longer -> int(size * long / short); img.resize(.., BILINEAR)
The pinned fixture environment has no torchvision, so this script calls those same Pillow/numpy
operations directly with fixed factors (the random draws are the Rust side's own; only the
deterministic image operations are compared). Factors are float32 values, as torchvision draws them.

Writes (uint8 tensors [H, W, 3]):
  tests/fixtures/stic/corrupt_refs.safetensors
    input                      a 48x32 image: random colours, greys, saturated primaries, ramps
    brightness/<f> contrast/<f> saturation/<f> hue/<f>    one adjustment with factor f
    jitter/<name>              adjustments composed in a fixed order (see COMPOSED)
    lowres/<size>              torchvision Resize(size) on the input
  metadata: the Pillow and numpy versions.

Usage (Pillow + numpy + safetensors; run from the repo root):
    /root/fxenv/bin/python scripts/gen_stic_corrupt_refs.py
"""
import sys
from pathlib import Path

import numpy as np
import PIL
from PIL import Image, ImageEnhance
from safetensors.numpy import save_file

F32 = lambda x: float(np.float32(x))  # noqa: E731

BRIGHTNESS = [0.5, 0.7, 1.0, 1.37, 1.5]
CONTRAST = [0.0, 0.3, 1.6]
SATURATION = [0.0, 0.4, 1.8]
HUE = [-0.5, -0.3, -0.2, -0.001, 0.05, 0.3, 0.5]
LOWRES = [20, 7]
# name -> [(op, factor)] applied in order.
COMPOSED = {
    "hue_then_brightness": [("hue", -0.17), ("brightness", 1.31)],
    "brightness_then_hue": [("brightness", 0.62), ("hue", 0.23)],
    "all_four": [("saturation", 1.4), ("hue", 0.11), ("contrast", 0.8), ("brightness", 1.2)],
}


def make_input():
    rng = np.random.default_rng(20240529)
    h, w = 32, 48
    img = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    img[0, :, :] = np.arange(w, dtype=np.uint8)[:, None] * 5  # grey ramp (s == 0 in HSV)
    prim = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255),
            (255, 255, 255), (0, 0, 0), (1, 0, 0), (254, 255, 255), (128, 64, 255), (10, 10, 11)]
    for i, p in enumerate(prim):
        img[1, i, :] = p
    img[2, :, 0] = np.arange(w, dtype=np.uint8) * 5  # red ramp over green
    img[2, :, 1] = 200
    img[2, :, 2] = 0
    # a smooth region (most photos are mostly smooth)
    yy, xx = np.mgrid[0:16, 0:48]
    img[16:, :, 0] = (xx * 5).astype(np.uint8)
    img[16:, :, 1] = (yy * 15).astype(np.uint8)
    img[16:, :, 2] = ((xx + yy) * 3).astype(np.uint8)
    return img


def adjust(img, op, f):
    f = F32(f)
    if op == "brightness":
        return ImageEnhance.Brightness(img).enhance(f)
    if op == "contrast":
        return ImageEnhance.Contrast(img).enhance(f)
    if op == "saturation":
        return ImageEnhance.Color(img).enhance(f)
    if op == "hue":
        h, s, v = img.convert("HSV").split()
        np_h = np.array(h, dtype=np.uint8)
        with np.errstate(invalid="ignore"):
            np_h += np.array(f * 255).astype(np.uint8)
        return Image.merge("HSV", (Image.fromarray(np_h, "L"), s, v)).convert("RGB")
    raise ValueError(op)


def resize_short(img, size):
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) == (w, h):
        return img
    return img.resize((new_w, new_h), Image.BILINEAR)


def main():
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("tests/fixtures")
    src = make_input()
    img = Image.fromarray(src, "RGB")
    out = {"input": src}
    for op, fs in [("brightness", BRIGHTNESS), ("contrast", CONTRAST), ("saturation", SATURATION), ("hue", HUE)]:
        for f in fs:
            out[f"{op}/{f}"] = np.array(adjust(img, op, f))
    for name, steps in COMPOSED.items():
        x = img
        for op, f in steps:
            x = adjust(x, op, f)
        out[f"jitter/{name}"] = np.array(x)
    for s in LOWRES:
        out[f"lowres/{s}"] = np.array(resize_short(img, s))
    dst = root / "stic" / "corrupt_refs.safetensors"
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in out.items()}, str(dst),
              metadata={"pillow": PIL.__version__, "numpy": np.__version__})
    print(f"wrote {dst} ({len(out)} tensors)")


if __name__ == "__main__":
    main()
