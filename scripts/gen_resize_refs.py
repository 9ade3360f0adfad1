"""Pillow reference outputs for `stic::image::resize_pil` and `load_image`.

Writes tests/fixtures/pixels/resize_refs.safetensors (uint8 tensors, ~400 KB):
- src/<name>  [H, W, 3]  the test image as HF sees it: PIL.Image.open + transformers'
  convert_to_rgb (alpha composited onto white, grey replicated). `gray` is stored as [H, W, 1]
  (its RGB form is the grey value three times; checked below).
  <name>: wide (wide.jpg, 200x120), tall (tall.png, 90x250 RGBA), gray (gray.png, 150x150 L),
  wcrop (wide rows 40..70, cols 30..70: a 40x30 image for cheap upscaling cases).
- resize/<name>/<filter>/<W>x<H>  [H, W, 3]  Image.fromarray(src, "RGB").resize((W, H), filter)
  <filter> is the PIL id: 1 lanczos, 2 bilinear, 3 bicubic, 4 box, 5 hamming.
- jpeg/<variant>/file [n]  the bytes of a small JPEG that PIL wrote from a 45x37 crop of wide, and
  jpeg/<variant>/pil [37, 45, 3]  what PIL + convert_to_rgb decode from it (libjpeg-turbo):
  progressive 4:2:0, baseline 4:2:2 with restart markers, progressive greyscale, Adobe CMYK,
  RGB without the YCbCr transform (4:4:4), optimised Huffman tables at quality 100.

The file's metadata records the Pillow version: Pillow 13 changed the order of the two
resampling passes for some sizes (see src/image/resize.rs), and the Rust test follows it.
Generate with the Pillow of the transformers environment the other fixtures come from.

Usage (Pillow + numpy + safetensors):
    python scripts/gen_resize_refs.py [tests/fixtures]
"""
import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from safetensors.numpy import save_file

# (source, width, height, filters): down- and up-scaling, non-integer factors, one-pass cases.
CASES = [
    ("wide", 37, 23, [1, 2, 3, 4, 5]),  # downscale ~5.4x, all filters
    ("wide", 84, 50, [2, 3]),           # CLIP-like downscale, non-integer (2.38x, 2.4x)
    ("wide", 23, 14, [2, 3]),           # strong downscale (8.7x): wide filter support
    ("wcrop", 97, 61, [2, 3]),          # upscale, non-integer (2.425x, 2.033x)
    ("wcrop", 53, 41, [1, 4, 5]),       # upscale, the other filters
    ("wcrop", 80, 60, [3]),             # upscale, exactly 2x
    ("wcrop", 40, 71, [2, 3]),          # width unchanged: vertical pass only
    ("wcrop", 23, 30, [2, 3]),          # height unchanged: horizontal pass only
    ("wcrop", 17, 13, [2, 3]),
    ("tall", 30, 83, [2, 3]),           # Pillow >= 13 runs the vertical pass first here
    ("tall", 36, 100, [3]),             # (height shrinks > 2x as many pixels as the width)
    ("gray", 84, 84, [3]),
    ("gray", 203, 17, [2, 3]),          # up in x, down in y (vertical first in Pillow >= 13)
]


def hf_convert_to_rgb(im: Image.Image) -> np.ndarray:
    """transformers.image_transforms.convert_to_rgb for a PIL image (transformers 5)."""
    has_alpha = "A" in im.getbands() or im.info.get("transparency") is not None
    if has_alpha:
        im = im.convert("RGBA")
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return np.array(Image.alpha_composite(white, im).convert("RGB"))
    return np.array(im.convert("RGB"))


JPEG_VARIANTS = {
    "prog420": ("RGB", dict(quality=75, subsampling=2, progressive=True)),
    "rst422": ("RGB", dict(quality=80, subsampling=1, restart_marker_blocks=2)),
    "grayprog": ("L", dict(quality=70, progressive=True)),
    "cmyk": ("CMYK", dict(quality=90)),
    "rgb444": ("RGB", dict(quality=85, subsampling=0, keep_rgb=True)),
    "q100opt": ("RGB", dict(quality=100, subsampling=0, optimize=True)),
}


def jpeg_cases(src: np.ndarray) -> dict:
    out = {}
    crop = Image.fromarray(np.ascontiguousarray(src[10:47, 20:65]), "RGB")
    for name, (mode, kw) in JPEG_VARIANTS.items():
        buf = io.BytesIO()
        crop.convert(mode).save(buf, "JPEG", **kw)
        data = buf.getvalue()
        out[f"jpeg/{name}/file"] = np.frombuffer(data, np.uint8).copy()
        out[f"jpeg/{name}/pil"] = hf_convert_to_rgb(Image.open(io.BytesIO(data)))
    return out


def main(fixtures: Path):
    images = fixtures / "images"
    src = {
        "wide": hf_convert_to_rgb(Image.open(images / "wide.jpg")),
        "tall": hf_convert_to_rgb(Image.open(images / "tall.png")),
        "gray": hf_convert_to_rgb(Image.open(images / "gray.png")),
    }
    src["wcrop"] = np.ascontiguousarray(src["wide"][40:70, 30:70])
    assert src["wide"].shape == (120, 200, 3) and src["tall"].shape == (250, 90, 3)
    g = src["gray"]
    assert (g[..., 0] == g[..., 1]).all() and (g[..., 0] == g[..., 2]).all()

    out = {f"src/{k}": v for k, v in src.items() if k != "gray"}
    out["src/gray"] = np.ascontiguousarray(g[..., :1])
    for name, w, h, filters in CASES:
        pil = Image.fromarray(src[name], "RGB")
        for f in filters:
            out[f"resize/{name}/{f}/{w}x{h}"] = np.array(pil.resize((w, h), resample=f))

    out.update(jpeg_cases(src["wide"]))

    import PIL
    dest = fixtures / "pixels" / "resize_refs.safetensors"
    dest.parent.mkdir(parents=True, exist_ok=True)
    save_file(out, str(dest), metadata={"pillow": PIL.__version__})
    print(f"wrote {dest}: {len(out)} tensors, {dest.stat().st_size} bytes (Pillow {PIL.__version__})")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures"))
