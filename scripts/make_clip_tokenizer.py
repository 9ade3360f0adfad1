"""Build CLIP's BPE `tokenizer.json` from the merges that ship in the PyPI wheel `open_clip_torch`.

    /root/fxenv/bin/pip install --no-deps open_clip_torch==3.3.0     # only its data file is read
    /root/fxenv/bin/python scripts/make_clip_tokenizer.py            # from the repo root

No model or tokenizer is downloaded: the merges are `open_clip/bpe_simple_vocab_16e6.txt.gz` of the
installed package (found without importing open_clip, whose runtime deps are not needed).

The vocabulary is laid out as OpenAI's CLIP (and `openai/clip-vit-*` vocab.json) does it:
the 256 byte symbols of the byte-to-unicode map, the same 256 with `</w>`, one token per merge (lines
2 .. 48895 of the merges file, 48894 merges), then `<|startoftext|>` (49406) and `<|endoftext|>`
(49407): 49408 tokens. The pipeline is the one of transformers' `CLIPTokenizer`(Fast), built here
with the `tokenizers` library: NFC, whitespace runs -> " ", lowercase; split on CLIP's regex
(specials | 's 't 're 've 'm 'll 'd | letter runs | single digits | other non-space runs), ByteLevel
without prefix space; BPE with end-of-word suffix `</w>` and unk `<|endoftext|>`; post-processor
`<|startoftext|> $A <|endoftext|>`.

Writes
- tests/fixtures/clip_tokenizer/tokenizer.json   the full tokenizer (49408 tokens);
- tests/fixtures/clip_tokenizer/expected.json    {"source", "max_length": 77, "cases": [{"text",
  "ids", "ids_truncated"}]}: ids from transformers' CLIPTokenizer (the fast, tokenizers-backed
  class of transformers 5) built from the vocab and merges alone, `ids` with
  `add_special_tokens=True`, `ids_truncated` with `truncation=True, max_length=77`.
The script asserts that this tokenizer.json gives transformers' ids on every recorded case and on a
few thousand random strings.

`build(n_merges)` with fewer merges gives a smaller CLIP tokenizer of the same kind (vocabulary
512 + n_merges + 2); `scripts/gen_fixtures.py` uses it for the tiny CLIPModel fixture.
"""
import gzip
import importlib.util
import json
import random
import sys
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "clip_tokenizer"
N_MERGES = 48894  # 49408 - 256 - 256 - 2
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
MAX_LENGTH = 77

CASES = [
    "a photo of a cat",
    "A Photo OF a CAT!!",
    "The dog is sitting on the couch.",
    "it's they're we've I'm you'll he'd don't",
    "IT'S THEY'RE WE'VE",
    "Numbers: 3.14159, 2024, 1,000,000 and 42nd",
    "naïve café résumé Ünïcödé ÀÉÎÕÜ",
    "日本語のテキストと中文",
    "Привет, мир",
    "emoji 😀👍🏽 and ☃",
    "  multiple   spaces\tand\nnewlines  ",
    "",
    "hyphen-ated words & symbols #@$%^*() [brackets] {braces}",
    "e-mail: someone@example.com, url https://example.org/a?b=c",
    "U.S.A. vs. u.k.",
    "x² ½ Ⅻ ① numerals",
    "ﬁne ligatures",
    "''double'' \"quoted\" `back`",
    "<|startoftext|> literal specials <|endoftext|>",
    "a man riding a wave on top of a surfboard",
    " ".join(["There is a red square and a blue circle on a striped background."] * 8),
    ", ".join(str(i) for i in range(60)),
]


def bpe_merges_path():
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("open_clip is not installed: pip install --no-deps open_clip_torch==3.3.0")
    return Path(list(spec.submodule_search_locations)[0]) / "bpe_simple_vocab_16e6.txt.gz"


def byte_symbols():
    """The 256 printable symbols of GPT-2's byte-to-unicode map, in byte order of that map: the
    printable Latin-1 bytes keep their character, the rest get 256, 257, ... in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(extra))]


def read_merges(n_merges):
    lines = gzip.open(bpe_merges_path()).read().decode("utf-8").split("\n")
    merges = [tuple(l.split()) for l in lines[1 : 1 + n_merges]]
    assert len(merges) == n_merges and all(len(m) == 2 for m in merges)
    return merges


def vocab_and_merges(n_merges=N_MERGES):
    merges = read_merges(n_merges)
    syms = byte_symbols()
    tokens = syms + [s + "</w>" for s in syms] + ["".join(m) for m in merges] + [BOS, EOS]
    vocab = {t: i for i, t in enumerate(tokens)}
    assert len(vocab) == len(tokens), "duplicate tokens"
    return vocab, merges


def build(n_merges=N_MERGES):
    """(tokenizers.Tokenizer, vocab, merges)."""
    vocab, merges = vocab_and_merges(n_merges)
    tok = Tokenizer(BPE(vocab=vocab, merges=merges, continuing_subword_prefix="", end_of_word_suffix="</w>",
                        fuse_unk=False, unk_token=EOS, dropout=None))
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(BOS, special=True, normalized=True), AddedToken(EOS, special=True, normalized=True)])
    tok.post_processor = processors.RobertaProcessing((EOS, vocab[EOS]), (BOS, vocab[BOS]), trim_offsets=False, add_prefix_space=False)
    return tok, vocab, merges


def transformers_tokenizer(vocab, merges):
    """transformers' own CLIPTokenizerFast, loaded from a vocab.json + merges.txt folder (the files of
    the openai/clip-vit-* repos), so it shares nothing with `build` but the vocabulary."""
    import tempfile

    from transformers import CLIPTokenizerFast

    d = Path(tempfile.mkdtemp())
    (d / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (d / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return CLIPTokenizerFast.from_pretrained(str(d), model_max_length=MAX_LENGTH)


def random_strings(n, seed):
    rng = random.Random(seed)
    alphabet = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,;:!?'\"-_()[]&%$#@/\\\t\n") + \
        list("éèàüößçñÅØÆ–—…“”‘’") + list("日本語中文한국어") + ["😀", "👍🏽", "ﬁ", "²", "Ⅻ", "'s", "'ll", "n't"]
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60))) for _ in range(n)]


def check_equal(tok, hf, texts):
    for t in texts:
        ours = tok.encode(t).ids
        theirs = hf(t)["input_ids"]
        assert ours == theirs, f"{t!r}: tokenizer.json {ours} != transformers {theirs}"


def dumps_cases(doc):
    """JSON with one line per case."""
    head = {k: v for k, v in doc.items() if k != "cases"}
    lines = [json.dumps(c, ensure_ascii=False) for c in doc["cases"]]
    body = json.dumps(head, ensure_ascii=False)[:-1]
    return body + ', "cases": [\n' + ",\n".join(lines) + "\n]}\n"


def main():
    tok, vocab, merges = build()
    assert len(vocab) == 49408 and vocab[BOS] == 49406 and vocab[EOS] == 49407
    hf = transformers_tokenizer(vocab, merges)
    check_equal(tok, hf, CASES + random_strings(3000, 0))
    assert tok.encode("a photo of a cat").ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    OUT.mkdir(parents=True, exist_ok=True)
    tok.save(str(OUT / "tokenizer.json"), pretty=False)
    reloaded = Tokenizer.from_file(str(OUT / "tokenizer.json"))
    check_equal(reloaded, hf, CASES)
    cases = []
    for t in CASES:
        ids = hf(t)["input_ids"]
        trunc = hf(t, truncation=True, max_length=MAX_LENGTH)["input_ids"]
        cases.append({"text": t, "ids": ids, "ids_truncated": trunc})
    assert any(len(c["ids"]) > MAX_LENGTH for c in cases)
    import tokenizers
    import transformers
    doc = {
        "source": f"transformers {transformers.__version__} CLIPTokenizerFast.from_pretrained(vocab.json + merges.txt of open_clip_torch's "
                  f"bpe_simple_vocab_16e6.txt.gz) (tokenizers {tokenizers.__version__})",
        "max_length": MAX_LENGTH,
        "cases": cases,
    }
    (OUT / "expected.json").write_text(dumps_cases(doc))
    print(f"wrote {OUT}/tokenizer.json ({(OUT / 'tokenizer.json').stat().st_size} bytes), expected.json ({len(cases)} cases)")


if __name__ == "__main__":
    main()
