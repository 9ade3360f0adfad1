"""DEV ONLY: large reference sets for the image module, written outside the repo (not committed).

    python scripts/gen_pixel_refs_dev.py resize OUT_DIR   # Pillow only: random resize sweep
    python scripts/gen_pixel_refs_dev.py hf OUT_DIR       # needs transformers (PIL backend)
    python scripts/gen_pixel_refs_dev.py decode OUT_DIR [IMAGE_DIR...]  # Pillow only

`resize` writes OUT_DIR/resize_sweep_pillow<major>.safetensors: case<i>/src [h,w,3] uint8 and
case<i>/out, with metadata "cases" = JSON list of [out_w, out_h, filter] and "pillow".

`hf` writes OUT_DIR/hf_refs.safetensors with, per image <name> (the committed test images read
with Image.open, plus synthetic RGB images of awkward sizes stored as src/<name>):
- next336/<name>  uint8 [N,3,336,336]  LlavaNextImageProcessorPil, llava-v1.6 values, no rescale/normalise
- clip336/<name>  uint8 [1,3,336,336]  CLIPImageProcessorPil, llava-1.5 values, no rescale/normalise
- next336n/<name>, clip336n/<name>  float32, the same normalised
- nexttiny/<name> float32  tiny config (shortest_edge 84, crop 84, small pinpoints), normalised
- sizes/<name>    int64 [2]  image_sizes (h, w) returned by the LLaVA-NeXT processor
and tables checked against transformers' helpers:
- best/in int64 [K,2] (h, w), best/out336, best/outtiny int64 [K,2] select_best_resolution
- patch/out336 int64 [K,2] get_patch_output_size(image of best/in, best/out336)
- short/out int64 [K,2] get_resize_output_image_size(size=336, default_to_square=False)

`decode` writes synthetic JPEG variants (sizes, qualities, subsampling, progressive, optimised
Huffman tables, restart markers, grayscale, CMYK, RGB-without-transform) to OUT_DIR/jpeg/ and
records, for those and every .jpg/.jpeg/.png in IMAGE_DIRs, what PIL + HF convert_to_rgb give:
OUT_DIR/decode_refs.safetensors, img<i> uint8 [H,W,3], metadata "files" = JSON list of paths
(null entry = PIL could not open it).
"""
import json
import sys
from pathlib import Path

import numpy as np
import PIL
from PIL import Image
from safetensors.numpy import save_file

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
PINPOINTS_336 = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
PINPOINTS_TINY = [[84, 168], [168, 84], [168, 168], [252, 84], [84, 252]]


def random_image(rng, h, w):
    kind = rng.integers(3)
    if kind == 0:
        return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([128 + 120 * np.sin(x / (3 + 20 * rng.random())), 128 + 120 * np.cos(y / 5.0),
                     (x * 7 + y * 3) % 256], -1)
    if kind == 2:  # hard edges: saturating overshoot of bicubic / lanczos
        base = np.where(((x // 4 + y // 3) % 2)[..., None] == 0, 0, 255) + 0 * base
    return np.clip(base + rng.integers(-20, 21, size=(h, w, 3)), 0, 255).astype(np.uint8)


def resize_sweep(out_dir: Path, n=400, seed=0):
    rng = np.random.default_rng(seed)
    tensors, cases = {}, []
    for i in range(n):
        h, w = (int(v) for v in rng.integers(1, 260, size=2))
        mode = rng.integers(4)
        if mode == 0:  # strong downscale
            ow, oh = max(1, w // int(rng.integers(2, 12))), max(1, h // int(rng.integers(2, 12)))
        elif mode == 1:  # one side unchanged
            ow, oh = (w, int(rng.integers(1, 400))) if rng.random() < 0.5 else (int(rng.integers(1, 400)), h)
        else:
            ow, oh = (int(v) for v in rng.integers(1, 400, size=2))
        f = int(rng.integers(1, 6))
        src = random_image(rng, h, w)
        tensors[f"case{i}/src"] = src
        tensors[f"case{i}/out"] = np.array(Image.fromarray(src, "RGB").resize((ow, oh), f))
        cases.append([ow, oh, f])
    major = PIL.__version__.split(".")[0]
    dest = out_dir / f"resize_sweep_pillow{major}.safetensors"
    save_file(tensors, str(dest), metadata={"cases": json.dumps(cases), "pillow": PIL.__version__})
    print(f"wrote {dest} ({n} cases, Pillow {PIL.__version__})")


def hf_convert_to_rgb(im):
    has_alpha = "A" in im.getbands() or im.info.get("transparency") is not None
    if has_alpha:
        im = im.convert("RGBA")
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return np.array(Image.alpha_composite(white, im).convert("RGB"))
    return np.array(im.convert("RGB"))


def jpeg_variants(out_dir: Path, seed=2):
    rng = np.random.default_rng(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    sizes = [(1, 1), (7, 3), (17, 9), (16, 16), (33, 65), (200, 120), (241, 163), (640, 480)]
    for i, (w, h) in enumerate(sizes):
        arr = random_image(rng, h, w)
        im = Image.fromarray(arr, "RGB")
        for q in (5, 50, 90, 100):
            for sub in (0, 1, 2):
                for prog in (False, True):
                    p = out_dir / f"v{w}x{h}_q{q}_s{sub}_p{int(prog)}.jpg"
                    try:
                        im.save(p, quality=q, subsampling=sub, progressive=prog, optimize=(q == 50))
                        paths.append(p)
                    except OSError as e:  # PIL's encoder buffer limit on tiny progressive files
                        print("skip", p.name, e)
        p = out_dir / f"v{w}x{h}_gray.jpg"
        im.convert("L").save(p, quality=80)
        paths.append(p)
        p = out_dir / f"v{w}x{h}_grayprog.jpg"
        im.convert("L").save(p, quality=80, progressive=True)
        paths.append(p)
        p = out_dir / f"v{w}x{h}_cmyk.jpg"
        im.convert("CMYK").save(p, quality=85)
        paths.append(p)
        for extra, kw in [("rgbkeep", {"keep_rgb": True}), ("rst", {"restart_marker_blocks": 3}),
                          ("rstrow", {"restart_marker_rows": 1, "progressive": True})]:
            p = out_dir / f"v{w}x{h}_{extra}.jpg"
            try:
                im.save(p, quality=75, **kw)
                paths.append(p)
            except (TypeError, ValueError, OSError) as e:
                print("skip", extra, e)
    return paths


def decode_refs(out_dir: Path, *image_dirs):
    paths = jpeg_variants(out_dir / "jpeg")
    for d in image_dirs:
        paths += sorted(p for p in Path(d).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    tensors, files = {}, []
    for p in paths:
        try:
            with Image.open(p) as im:
                arr = hf_convert_to_rgb(im)
        except Exception as e:  # PIL cannot read it: record that
            print("PIL fails:", p.name, type(e).__name__, e)
            files.append([str(p), None])
            continue
        tensors[f"img{len(files)}"] = np.ascontiguousarray(arr)
        files.append([str(p), f"img{len(files)}"])
    dest = out_dir / "decode_refs.safetensors"
    save_file(tensors, str(dest), metadata={"files": json.dumps(files), "pillow": PIL.__version__})
    print(f"wrote {dest}: {len(tensors)} images of {len(files)} files")


def hf_refs(out_dir: Path):
    import transformers
    from transformers.image_processing_utils import get_patch_output_size, select_best_resolution
    from transformers.image_transforms import get_resize_output_image_size
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    common = dict(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}, resample=3)
    raw = dict(do_rescale=False, do_normalize=False)
    next_raw = LlavaNextImageProcessorPil(image_grid_pinpoints=PINPOINTS_336, **common, **raw)
    next_n = LlavaNextImageProcessorPil(image_grid_pinpoints=PINPOINTS_336, **common)
    clip_raw = CLIPImageProcessorPil(**common, **raw)
    clip_n = CLIPImageProcessorPil(**common)
    tiny = LlavaNextImageProcessorPil(image_grid_pinpoints=PINPOINTS_TINY, size={"shortest_edge": 84},
                                      crop_size={"height": 84, "width": 84}, resample=3)

    rng = np.random.default_rng(1)
    images = {p.stem: Image.open(p) for p in sorted((FIXTURES / "images").iterdir())}
    tensors = {}
    for h, w in [(700, 1000), (517, 333), (10, 20), (200, 1200), (1500, 300), (336, 336), (672, 1344),
                 (1, 1), (401, 399)]:
        arr = random_image(rng, h, w)
        name = f"syn{h}x{w}"
        tensors[f"src/{name}"] = arr
        images[name] = Image.fromarray(arr, "RGB")

    for name, im in images.items():
        r = next_raw(im, return_tensors="np")
        tensors[f"next336/{name}"] = np.ascontiguousarray(r["pixel_values"][0])
        tensors[f"sizes/{name}"] = np.asarray(r["image_sizes"][0], dtype=np.int64)
        tensors[f"next336n/{name}"] = np.ascontiguousarray(next_n(im, return_tensors="np")["pixel_values"][0])
        tensors[f"clip336/{name}"] = np.ascontiguousarray(clip_raw(im, return_tensors="np")["pixel_values"])
        tensors[f"clip336n/{name}"] = np.ascontiguousarray(clip_n(im, return_tensors="np")["pixel_values"])
        tensors[f"nexttiny/{name}"] = np.ascontiguousarray(tiny(im, return_tensors="np")["pixel_values"][0])
    for k, v in tensors.items():
        if k.startswith(("next336/", "clip336/")):
            assert v.dtype == np.uint8, (k, v.dtype)

    sizes = [(int(h), int(w)) for h, w in rng.integers(1, 3000, size=(3000, 2))]
    sizes += [(h, w) for h in range(1, 120, 7) for w in range(1, 120, 5)]
    sizes += [(336, 672), (672, 336), (120, 200), (250, 90), (150, 150), (1008, 336), (500, 1000)]
    best336 = [select_best_resolution(s, PINPOINTS_336) for s in sizes]
    tensors["best/in"] = np.array(sizes, np.int64)
    tensors["best/out336"] = np.array(best336, np.int64)
    tensors["best/outtiny"] = np.array([select_best_resolution(s, PINPOINTS_TINY) for s in sizes], np.int64)
    tensors["patch/out336"] = np.array(
        [get_patch_output_size(np.zeros((1, h, w), np.uint8), b, input_data_format="channels_first")
         for (h, w), b in zip(sizes, best336)], np.int64)
    tensors["short/out"] = np.array(
        [get_resize_output_image_size(np.zeros((1, h, w), np.uint8), 336, default_to_square=False,
                                      input_data_format="channels_first") for h, w in sizes], np.int64)
    dest = out_dir / "hf_refs.safetensors"
    save_file(tensors, str(dest), metadata={"transformers": transformers.__version__, "pillow": PIL.__version__})
    print(f"wrote {dest}: {len(tensors)} tensors (transformers {transformers.__version__}, Pillow {PIL.__version__})")


if __name__ == "__main__":
    part, out = sys.argv[1], Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    {"resize": resize_sweep, "hf": hf_refs, "decode": decode_refs}[part](out, *sys.argv[3:])
