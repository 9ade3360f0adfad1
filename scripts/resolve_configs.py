"""Record how transformers resolves the hub configs in tests/fixtures/configs/ (defaults filled in),
so that the Rust config parser is checked against transformers rather than against itself.

    python scripts/resolve_configs.py   # writes tests/fixtures/configs/<name>.resolved.json
"""
import json
from pathlib import Path

import transformers
from transformers import AutoConfig

DIR = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "configs"
TEXT = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
        "num_key_value_heads", "head_dim", "rms_norm_eps", "sliding_window", "max_position_embeddings",
        "tie_word_embeddings"]
VISION = ["hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size",
          "patch_size", "layer_norm_eps", "hidden_act"]


def rope_theta(tc):
    rp = getattr(tc, "rope_parameters", None)
    if rp:
        return rp["rope_theta"]
    return tc.rope_theta


for src in sorted(DIR.glob("*.json")):
    if src.name.endswith((".resolved.json", ".v5.json")):
        continue
    cfg = AutoConfig.for_model(**json.loads(src.read_text()))
    # What transformers 5 itself writes for this config (rope_parameters instead of rope_theta).
    cfg.save_pretrained(DIR / "_tmp")
    (DIR / (src.stem + ".v5.json")).write_text((DIR / "_tmp" / "config.json").read_text())
    (DIR / "_tmp" / "config.json").unlink()
    (DIR / "_tmp").rmdir()
    tc, vc = cfg.text_config, cfg.vision_config
    out = {
        "source": f"transformers {transformers.__version__} AutoConfig.for_model(**{src.name})",
        "model_type": cfg.model_type,
        "text": {k: getattr(tc, k, None) for k in TEXT} | {"model_type": tc.model_type, "rope_theta": rope_theta(tc)},
        "vision": {k: getattr(vc, k) for k in VISION},
        "image_token_index": getattr(cfg, "image_token_index", None) or cfg.image_token_id,
        "vision_feature_layer": cfg.vision_feature_layer,
        "vision_feature_select_strategy": cfg.vision_feature_select_strategy,
        "image_grid_pinpoints": getattr(cfg, "image_grid_pinpoints", None),
    }
    if out["text"]["head_dim"] is None:
        out["text"]["head_dim"] = tc.hidden_size // tc.num_attention_heads
    (DIR / (src.stem + ".resolved.json")).write_text(json.dumps(out, indent=1) + "\n")
    print(src.name, "resolved")
