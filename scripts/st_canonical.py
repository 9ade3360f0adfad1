"""save_sorted: safetensors' save_file with reproducible bytes (imported by the fixture scripts).

safetensors writes the header's __metadata__ in a hash map's order, so the same tensors and values
gave different bytes on each run; save_sorted rewrites the header with its metadata keys sorted
(same length, so the tensor offsets do not move).
"""
import json

from safetensors.torch import save_file


def save_sorted(tensors, path, metadata):
    save_file(tensors, path, metadata=metadata)
    raw = bytearray(path.read_bytes())
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    assert len(text) <= n, "the canonical header is not longer than the written one"
    raw[8:8 + n] = text + b" " * (n - len(text))
    path.write_bytes(bytes(raw))
