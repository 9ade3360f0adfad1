"""Convert the Mistral-7B SentencePiece model shipped in `mistral-common` into a Hugging Face
`tokenizer.json` laid out like the hub file of llava-hf/llava-v1.6-mistral-7b-hf, and record
reference encodings.

    /root/fxenv/bin/python scripts/convert_tokenizer.py            # from the repo root

Source: `mistral_common/data/tokenizer.model.v1` inside the installed PyPI package
mistral-common (the Mistral-7B v0.1/v0.2 SentencePiece BPE model, 32000 pieces, byte fallback).

Output (tests/fixtures/tokenizer/):
- tokenizer.json           legacy Llama/Mistral fast tokenizer: normalizer Sequence[Prepend("▁"),
                           Replace(" ", "▁")], no pre-tokenizer, BPE with byte_fallback and fuse_unk,
                           post-processor TemplateProcessing "<s> $A", decoder
                           Sequence[Replace("▁"," "), ByteFallback, Fuse, Strip(left=1)];
                           added tokens <unk>=0, <s>=1, </s>=2, <image>=32000, <pad>=32001.
- tokenizer_config.json,
  special_tokens_map.json  so that AutoTokenizer.from_pretrained(folder) works.
- expected.json            reference encodings (ids from the HF `tokenizers` library), every case
                           without <image> cross-checked against the `sentencepiece` library on the
                           original model file.

Why this is done by hand instead of transformers.convert_slow_tokenizer.LlamaConverter:
in transformers 5.x there is no sentencepiece-backed LlamaTokenizer any more, and
SpmConverter.tokenizer() calls SentencePieceExtractor.extract(vocab_scores) whose 5.x signature
is extract(model_type, **kwargs) (it returns a kwargs dict), so the BPE branch no longer works.
The code below reproduces what transformers 4.x LlamaConverter(legacy=True) +
LlamaTokenizerFast(from_slow=True) produced (the algorithm that made the hub files): vocab = the
SentencePiece pieces with their scores, merges = every split (l, r) of a piece where both halves are
pieces, ordered by the piece score (descending, stable), ties inside one piece by (id(l), id(r)).
"""
import json
import os
import random
import sys
from pathlib import Path

import mistral_common
import sentencepiece as spm
import tokenizers
import transformers
from sentencepiece import sentencepiece_model_pb2 as model_pb2
from tokenizers import AddedToken, Tokenizer, decoders, normalizers, processors
from tokenizers.models import BPE

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "tokenizer"

SPM_PATH = Path(mistral_common.__file__).resolve().parent / "data" / "tokenizer.model.v1"

IMAGE_TOKEN, IMAGE_ID = "<image>", 32000
PAD_TOKEN, PAD_ID = "<pad>", 32001

PROMPT = "What is shown in this image?"
NEXT_TEMPLATE = "[INST] <image>\n{prompt} [/INST]"
V15_TEMPLATE = "USER: <image>\n{prompt} ASSISTANT:"

# (text, add_special_tokens)
CASES = [
    ("Hello world", True),
    ("The quick brown fox jumps over the lazy dog.", False),
    (" leading space", True),
    ("trailing space ", True),
    ("multiple   spaces  and\ttab", True),
    ("line one\nline two\n\nline four", True),
    ("Numbers: 0 7 42 1234567890 3.14159 -17", True),
    ("Unicode: café naïve Ωμέγα 東京 Привет", True),
    ("Emoji 🦀🚀 and rare ☃ ∮ 𝄞", True),
    ("", True),
    ("A red square and a blue circle on a striped background.", False),
    ("before <image> after", True),
    ("<image>", True),
    ("two <image><image> images\n<image>", False),
    (NEXT_TEMPLATE.format(prompt=PROMPT), True),
    (V15_TEMPLATE.format(prompt=PROMPT), True),
    (NEXT_TEMPLATE.format(prompt="Describe   this,\nplease! 🙂"), True),
]


def load_proto(path):
    m = model_pb2.ModelProto()
    m.ParseFromString(path.read_bytes())
    return m


def build_merges(vocab, vocab_scores):
    """transformers 4.x SentencePieceExtractor.extract(vocab_scores) (the algorithm behind the hub
    tokenizer.json files of Llama/Mistral)."""
    merges = []
    for piece, score in vocab_scores.items():
        local = []
        for i in range(1, len(piece)):
            left, right = piece[:i], piece[i:]
            if left in vocab and right in vocab:
                local.append((left, right, score))
        local.sort(key=lambda x: (vocab[x[0]], vocab[x[1]]))
        merges.extend(local)
    merges.sort(key=lambda x: x[2], reverse=True)  # stable
    return [(l, r) for l, r, _ in merges]


def build_tokenizer(proto):
    assert proto.trainer_spec.model_type == 2, "expected a BPE SentencePiece model"
    assert proto.trainer_spec.byte_fallback
    pieces = [(p.piece, p.score) for p in proto.pieces]
    assert pieces[0][0] == "<unk>" and pieces[1][0] == "<s>" and pieces[2][0] == "</s>"
    assert len(pieces) == 32000, len(pieces)
    # LlamaConverter.vocab: the three specials get score 0.0
    vocab_scores = [(p, 0.0) for p, _ in pieces[:3]] + pieces[3:]
    vocab = {p: i for i, (p, _) in enumerate(vocab_scores)}
    merges = build_merges(vocab, dict(vocab_scores))

    tok = Tokenizer(
        BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True, dropout=None)
    )
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = None
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    # the specials as LlamaTokenizerFast registers them
    tok.add_special_tokens(
        [AddedToken(t, normalized=False, special=True) for t in ("<unk>", "<s>", "</s>")]
    )
    # llava-hf adds <image> then <pad> (ids 32000, 32001) as special tokens
    tok.add_special_tokens([AddedToken(IMAGE_TOKEN, normalized=False, special=True)])
    tok.add_special_tokens([AddedToken(PAD_TOKEN, normalized=False, special=True)])
    assert tok.token_to_id(IMAGE_TOKEN) == IMAGE_ID and tok.token_to_id(PAD_TOKEN) == PAD_ID
    # LlamaTokenizerFast.update_post_processor with add_bos_token=True, add_eos_token=False
    tok.post_processor = processors.TemplateProcessing(
        single="<s>:0 $A:0", pair="<s>:0 $A:0 <s>:1 $B:1", special_tokens=[("<s>", 1)]
    )
    return tok


def tokenizer_config():
    added = {}
    for i, t in [(0, "<unk>"), (1, "<s>"), (2, "</s>"), (IMAGE_ID, IMAGE_TOKEN), (PAD_ID, PAD_TOKEN)]:
        added[str(i)] = {
            "content": t, "lstrip": False, "normalized": False, "rstrip": False,
            "single_word": False, "special": True,
        }
    # as in llava-hf/llava-v1.6-mistral-7b-hf (chat_template omitted; prompts are templated by hand),
    # except tokenizer_class
    return {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": added,
        "additional_special_tokens": [],
        "bos_token": "<s>",
        "clean_up_tokenization_spaces": False,
        "eos_token": "</s>",
        "legacy": True,
        "model_max_length": 1000000000000000019884624838656,
        "pad_token": PAD_TOKEN,
        "padding_side": "left",
        "sp_model_kwargs": {},
        "spaces_between_special_tokens": False,
        # NOT "LlamaTokenizer" as on the hub: transformers 5.x LlamaTokenizer rebuilds the backend
        # with a Metaspace pre-tokenizer and drops this file's normalizer (see main()).
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": "<unk>",
        "use_default_system_prompt": False,
    }


SPECIAL_TOKENS_MAP = {
    "bos_token": {"content": "<s>", "lstrip": False, "normalized": False, "rstrip": False, "single_word": False},
    "eos_token": {"content": "</s>", "lstrip": False, "normalized": False, "rstrip": False, "single_word": False},
    "pad_token": {"content": "<pad>", "lstrip": False, "normalized": False, "rstrip": False, "single_word": False},
    "unk_token": {"content": "<unk>", "lstrip": False, "normalized": False, "rstrip": False, "single_word": False},
}


def check_structure(path):
    j = json.loads(Path(path).read_text())
    assert j["normalizer"] == {
        "type": "Sequence",
        "normalizers": [{"type": "Prepend", "prepend": "▁"}, {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}],
    }, j["normalizer"]
    assert j["pre_tokenizer"] is None
    assert j["model"]["type"] == "BPE" and j["model"]["byte_fallback"] is True and j["model"]["fuse_unk"] is True
    assert j["model"]["unk_token"] == "<unk>"
    assert [d["type"] for d in j["decoder"]["decoders"]] == ["Replace", "ByteFallback", "Fuse", "Strip"]
    assert j["post_processor"]["type"] == "TemplateProcessing"
    assert [(a["id"], a["content"], a["special"]) for a in j["added_tokens"]] == [
        (0, "<unk>", True), (1, "<s>", True), (2, "</s>", True), (32000, "<image>", True), (32001, "<pad>", True)
    ]
    assert len(j["model"]["vocab"]) == 32000
    return j


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    proto = load_proto(SPM_PATH)
    tok = build_tokenizer(proto)
    tok_path = OUT / "tokenizer.json"
    tok.save(str(tok_path))  # pretty JSON
    (OUT / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(), indent=2, ensure_ascii=False) + "\n")
    (OUT / "special_tokens_map.json").write_text(json.dumps(SPECIAL_TOKENS_MAP, indent=2) + "\n")
    j = check_structure(tok_path)
    print(f"wrote {tok_path} ({tok_path.stat().st_size} bytes, {len(j['model']['merges'])} merges)")

    # reload from disk with the tokenizers library: this is the reference
    ref = Tokenizer.from_file(str(tok_path))
    sp = spm.SentencePieceProcessor(model_file=str(SPM_PATH))
    assert sp.bos_id() == 1 and sp.eos_id() == 2 and sp.unk_id() == 0 and sp.get_piece_size() == 32000
    # the loaded transformers tokenizer (what the processors use)
    hf = transformers.AutoTokenizer.from_pretrained(str(OUT))
    assert hf.bos_token_id == 1 and hf.eos_token_id == 2 and hf.pad_token_id == PAD_ID
    assert hf.convert_tokens_to_ids(IMAGE_TOKEN) == IMAGE_ID

    templated = NEXT_TEMPLATE.format(prompt=PROMPT)
    ids = ref.encode(templated, add_special_tokens=True).ids
    want = [1, 733, 16289, 28793, 28705, 32000, 28705, 13]
    assert ids[: len(want)] == want, ids
    print("templated llava-next prompt:", ids)

    # transformers 5.x, class LlamaTokenizer (what the hub tokenizer_config.json names): it keeps only
    # vocab/merges/post-processor of tokenizer.json and uses Metaspace(prepend_scheme="always",
    # split=False) instead of the legacy normalizer. Report where that differs from tokenizer.json.
    llama5 = transformers.LlamaTokenizer.from_pretrained(str(OUT))
    llama5_diffs = []

    cases = []
    n_sp = 0
    for text, special in CASES:
        ids = ref.encode(text, add_special_tokens=special).ids
        hf_ids = hf(text, add_special_tokens=special)["input_ids"]
        assert hf_ids == ids, (text, hf_ids, ids)
        l5 = llama5(text, add_special_tokens=special)["input_ids"]
        if l5 != ids:
            llama5_diffs.append(text)
            print(f"  NOTE transformers {transformers.__version__} LlamaTokenizer differs on {text!r}: {l5}")
        if IMAGE_TOKEN not in text:
            sp_ids = ([1] if special else []) + sp.encode(text)
            assert sp_ids == ids, (text, sp_ids, ids)
            n_sp += 1
        # decoding round trip (no specials, no <unk>)
        dec = ref.decode(ids, skip_special_tokens=True)
        if IMAGE_TOKEN not in text:
            assert dec == text, (text, dec)
        cases.append({"text": text, "add_special_tokens": special, "ids": ids})
        print(f"{special!s:5} {text!r:60} -> {ids}")

    # a wider (unrecorded) agreement check with sentencepiece: every line of this script and
    # 2000 random strings mixing ASCII, spaces, newlines, accents, CJK and emoji
    rng = random.Random(1234)
    alphabet = list("abcdefghijklmnopqrstuvwxyzABCXYZ0123456789 .,;:!?'\"()[]{}<>/-_=+*#@$%&\\|~`^") + [
        " ", " ", " ", "\n", "\t", "é", "ü", "ß", "Ω", "ж", "東", "京", "語", "🦀", "🙂", "\u2581", "\u00a0", "\u200b"]
    bulk = Path(__file__).read_text().splitlines()
    bulk += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))) for _ in range(2000)]
    # literal special-token text ("<s>", "<image>", ...) is a special token for HF and plain text
    # for sentencepiece: leave such strings out of this comparison
    specials = ("<unk>", "<s>", "</s>", IMAGE_TOKEN, PAD_TOKEN)
    bulk = [t for t in bulk if not any(x in t for x in specials)]
    for text in bulk:
        ids = ref.encode(text, add_special_tokens=True).ids
        assert ids == [1] + sp.encode(text), text
    print(f"bulk check: {len(bulk)} strings agree with sentencepiece")

    expected = {
        "source": (
            f"scripts/convert_tokenizer.py: mistral_common {mistral_common.__version__} "
            f"data/tokenizer.model.v1 converted to tokenizer.json; ids from tokenizers {tokenizers.__version__} "
            f"(Tokenizer.from_file(tokenizer.json).encode(text, add_special_tokens)); equal to "
            f"transformers {transformers.__version__} AutoTokenizer on this folder; the {n_sp} cases without "
            f"<image> equal sentencepiece {spm.__version__} encode() on tokenizer.model.v1 with BOS (id 1) "
            f"prepended when add_special_tokens is true. Decoding each case without <image> with "
            f"skip_special_tokens=True gives the text back. Note: transformers {transformers.__version__} "
            f"LlamaTokenizer (the class the hub tokenizer_config.json names) rebuilds the backend with a "
            f"Metaspace pre-tokenizer instead of the legacy normalizer and gives different ids for "
            f"{llama5_diffs!r} (a segment that starts with a space gets no extra '\u2581'); sentencepiece "
            f"agrees with tokenizer.json, so tokenizer_config.json here names PreTrainedTokenizerFast. "
            f"Also checked (not recorded): {len(bulk)} more strings agree with sentencepiece."
        ),
        "cases": cases,
    }
    (OUT / "expected.json").write_text(json.dumps(expected, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {OUT / 'expected.json'}: {len(cases)} cases, {n_sp} cross-checked with sentencepiece")


if __name__ == "__main__":
    main()
