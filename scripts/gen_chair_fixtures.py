#!/usr/bin/env python2.7
"""Fixtures for `stic eval --bench chair` (tests/fixtures/eval/chair) and the word-list data files
(src/eval/data/), from the official CHAIR code run as it is.

CSR's README ("CHAIR metrics in LURE") points to LURE, whose README says to compute CHAIR with
LisaAnne/Hallucination `utils/chair.py` after converting the answers with LURE's `tool/to_chair.py`.
That code is Python 2 (print statements) and pins nltk==3.2.5 and pattern==3.6, so this script runs
under Python 2.7:

    P=/root/.pyenv/versions/2.7.18/bin/python      # any Python 2.7
    $P -m pip install --target /root/chairenv nltk==3.2.5 future
    PYTHONPATH=/root/chairenv $P scripts/gen_chair_fixtures.py \
        --hallucination HALLUCINATION_GIT_DIR --pattern PATTERN_GIT_DIR

HALLUCINATION_GIT_DIR is a clone of github.com/LisaAnne/Hallucination (read at commit HALLU_COMMIT),
PATTERN_GIT_DIR a clone of github.com/clips/pattern (read at PATTERN_COMMIT, the last change of
pattern/text/en/inflect.py, which pattern 3.6 ships unchanged). The files are read with `git show`.

What is NOT the official environment (see docs/CSR.md, "## Benchmarks"):
- pattern 3.6 is no longer on PyPI: `from pattern.en import singularize` is served by the pinned
  pattern/text/en/inflect.py itself, imported with a stub `pattern.text` (it only needs the names
  of a verb-table class that singularize never uses).
- nltk's English punkt model cannot be downloaded (no network but package registries):
  `nltk.word_tokenize` is run with nltk 3.2.5's own Punkt sentence splitter, untrained (no
  abbreviation list), in place of `tokenizers/punkt/english.pickle`.
- chair.py's `from misc import *` is served by a stub that only imports os/sys/json (misc.py pulls
  in numpy and the paper's language-model consistency code, which CHAIR does not use).
- chair.py's `__main__` reads `args.coco_path`, which its parser does not define; the script calls
  the CHAIR class as `__main__` means to.
"""
from __future__ import print_function

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile

HALLU_COMMIT = "6e4d33c4bedf6dfcd24c61bf527f40714717be47"
PATTERN_COMMIT = "e18fd2a"

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
FIX = os.path.join(ROOT, "tests", "fixtures", "eval", "chair")
DATA = os.path.join(ROOT, "src", "eval", "data")

CATEGORIES = [
    (1, "person"), (2, "bicycle"), (3, "car"), (4, "motorcycle"), (5, "airplane"), (6, "bus"),
    (7, "train"), (10, "traffic light"), (11, "fire hydrant"), (16, "bird"), (17, "cat"),
    (18, "dog"), (19, "horse"), (20, "sheep"), (21, "cow"), (22, "elephant"), (25, "giraffe"),
    (32, "tie"), (46, "wine glass"), (47, "cup"), (58, "hot dog"), (62, "chair"), (63, "couch"),
    (65, "bed"), (67, "dining table"), (70, "toilet"), (72, "tv"), (77, "cell phone"),
    (88, "teddy bear"),
]

# image id -> (file name, instance category ids, ground-truth captions)
IMAGES = [
    (139, [18, 18, 1], ["A man walks his dog in the park.", "Two dogs and a person on grass."]),
    (285, [22, 22], ["An elephant and its baby elephant near the water."]),
    (632, [65, 63], ["A bedroom with a bed and a sofa.", "A tidy bedroom."]),
    (724, [10, 3, 3], ["Cars stopped at a traffic light.", "A street at night."]),
    (776, [88], ["A teddy bear sitting alone.", "Three teddy bears in a pile."]),
    (785, [70], ["A white toilet in a small bathroom."]),
    (802, [46, 67], ["Wine glasses on a dining table."]),
    (872, [19, 1], ["A woman riding a horse.", "A rider on a pony."]),
    (885, [5], ["A passenger jet on the runway."]),
    (1000, [17, 72], ["A cat watching the television."]),
    (1268, [58, 47], ["A hot dog and a cup of coffee."]),
    (1296, [7], ["A train at the station."]),
]

# image id -> generated caption (the model's answer)
PREDICTIONS = [
    (139, "Two dogs are playing with a frisbee while people watch. A man holds a leash."),
    (285, "A baby elephant stands next to an adult elephant and a giraffe."),
    (632, "The bedroom has a bed, a couch and a chair by the window."),
    (724, "Several cars wait at the traffic lights; a motor bike is parked near a fire hydrant."),
    (776, "Teddy bears sit on a shelf next to a dog's bowl."),
    (785, "A toilet with the toilet seat up, and a cat sitting on it."),
    (802, "Two wine glasses and a bottle on the dining table."),
    (872, "A girl rides a pony while children look on."),
    (885, "A passenger jet parked at the gate, with a bus nearby."),
    (1000, "A cat sitting in front of a tv. The cat's tail is long."),
    (1268, "Hot dogs on a plate with cups of coffee and a cell phone."),
    (1296, ""),
]

# Captions whose words the official `caption_to_words` gives, to test the tokeniser, singularize,
# double words and synonyms on more than the scored set.
PROBES = [
    "A man and a woman sitting on a bench.",
    "Two giraffes standing in a field. Some zebras graze nearby.",
    "The children's toys are on the floor; a puppy sleeps.",
    "A bow tie on a man's shirt, and his cell-phone on the table.",
    "Glasses of wine: three wine glasses, a wine glass and a glass.",
    "Buses, trains and motor cycles crowd the street!",
    "A stop light, a stop sign and a street light... at dusk?",
    "Mice and geese near the oxen; a teddybear and an iPhone.",
    "Two people (a boy and a girl) play \"catch\" with a dog.",
    "The kid's kites fly high above the beach towels.",
    "A baby bird and an adult bird sit on the passenger train.",
    "There is a toilet seat and a chair in the bathroom.",
    "A laptop computer, a mobile phone and a tv remote on the desk.",
    "Knives, forks and spoons next to the plates and the wine bottles.",
    "Horses, cows, sheep and bison in a pasture with a barn.",
    "A cat. a dog. mr. smith and 2. three sheep.",
    "A skateboarder does a trick while skiers and snowboarders watch.",
    "Potted plants and a hair drier by the sinks; sports balls and baseball bats.",
    "An airplane, an air plane, a plane and jets at the airport.",
    "Tennis rackets and a baseball glove lie on the benches, next to the parking meter.",
    # Punkt and Treebank edge cases.
    "A seat next to the toilet. The dog's. a cat (a. b) mr. dog; the u.s. army",
    "A dog.) A cat. \"A horse,\" he said. Dogs' bowls and a mother-in-law.",
    "2 dogs... a cat?! A hot-dog, a cell phone--and cannot wanna see 'tis cows.",
    "A dog\nand a cat\tand a bird.  Two   spaces. e.g. a dog's bed.",
    "Don't feed the cats! They're on the couch: 3 cats, 4.5 dogs; @home #1 $5 50% & more <tv>.",
    "A bear [teddy] {toy}. x. Y. 3. The end.",
    "Bicyclists and skiers. A wine glas, wine glasses; a baby's bottle.",
]

EXTRA_WORDS = [
    "dogs", "glasses", "glass", "buses", "bus", "geese", "mice", "knives", "wolves", "leaves",
    "children", "people", "men", "women", "oxen", "sheep", "fish", "series", "news", "boxes",
    "benches", "dishes", "matrices", "indices", "quizzes", "cacti", "octopi", "viri", "crises",
    "shoes", "potatoes", "heroes", "movies", "zombies", "flies", "cookies", "ties", "pies", "lives",
    "halves", "dwarves", "nerves", "calves", "olives", "hives", "analyses", "theses", "diagnoses",
    "hoses", "roses", "glucose", "bacteria", "criteria", "data", "alumnae", "tonsillitis",
    "plateaux", "feet", "teeth", "is", "was", "has", "its", "this", "us", "as", "ep", "a", "s",
    "kiwis", "skis", "taxis", "radii", "elves", "mothers-in-law", "dogs'", "bears'", "cat's",
    "tv", "phones", "cellphones", "phon", "bicyclists", "sandwiches", "couches", "caboose",
]


def git_show(git_dir, commit, path):
    return subprocess.check_output(["git", "--git-dir", git_dir, "show", "%s:%s" % (commit, path)])


def git_dir(p):
    return p if os.path.isdir(os.path.join(p, "objects")) else os.path.join(p, ".git")


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.write("\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hallucination", required=True)
    ap.add_argument("--pattern", required=True)
    args = ap.parse_args()
    hallu, pattern = git_dir(args.hallucination), git_dir(args.pattern)

    work = tempfile.mkdtemp(prefix="chair-official-")
    # The official code, as committed.
    os.makedirs(os.path.join(work, "utils", "data"))
    with open(os.path.join(work, "utils", "chair.py"), "wb") as f:
        f.write(git_show(hallu, HALLU_COMMIT, "utils/chair.py"))
    synonyms = git_show(hallu, HALLU_COMMIT, "data/synonyms.txt")
    with open(os.path.join(work, "utils", "data", "synonyms.txt"), "wb") as f:
        f.write(synonyms)
    with open(os.path.join(work, "utils", "misc.py"), "w") as f:
        f.write("import os\nimport sys\nimport json\n")
    # pattern.en.singularize from the pinned inflect.py.
    pkg = os.path.join(work, "pattern")
    os.makedirs(os.path.join(pkg, "text", "en"))
    with open(os.path.join(pkg, "__init__.py"), "w") as f:
        f.write("")
    with open(os.path.join(pkg, "text", "__init__.py"), "w") as f:
        f.write("class Verbs(object):\n    def __init__(self, *a, **k):\n        pass\n    conjugate = lemma = lexeme = tenses = None\n"
                "INFINITIVE, PRESENT, PAST, FUTURE = 'inf', 'pres', 'pst', 'fut'\n"
                "FIRST, SECOND, THIRD = 1, 2, 3\nSINGULAR, PLURAL = SG, PL = 'sg', 'pl'\n"
                "PROGRESSIVE, PARTICIPLE = 'prog', 'part'\n")
    with open(os.path.join(pkg, "text", "en", "__init__.py"), "w") as f:
        f.write("")
    with open(os.path.join(pkg, "text", "en", "inflect.py"), "wb") as f:
        f.write(git_show(pattern, PATTERN_COMMIT, "pattern/text/en/inflect.py"))
    os.makedirs(os.path.join(pkg, "en"))
    with open(os.path.join(pkg, "en", "__init__.py"), "w") as f:
        f.write("from pattern.text.en.inflect import singularize\n")
    sys.path.insert(0, work)
    sys.path.insert(0, os.path.join(work, "utils"))

    import nltk
    import nltk.tokenize
    from nltk.tokenize.punkt import PunktSentenceTokenizer
    _punkt = PunktSentenceTokenizer()
    nltk.tokenize.sent_tokenize = lambda text, language="english": _punkt.tokenize(text)

    os.chdir(os.path.join(work, "utils"))
    import chair as official
    from pattern.text.en import inflect

    # COCO-style annotation files (the official code reads train and val 2014 and merges them).
    ann = os.path.join(work, "annotations")
    os.makedirs(ann)
    cats = [{"id": i, "name": n, "supercategory": "x"} for i, n in CATEGORIES]
    images = [{"id": i, "file_name": "COCO_val2014_%012d.jpg" % i, "width": 640, "height": 480}
              for i, _, _ in IMAGES]
    inst = []
    caps = []
    for imid, cat_ids, gt_caps in IMAGES:
        for c in cat_ids:
            inst.append({"id": len(inst) + 1, "image_id": imid, "category_id": c, "iscrowd": 0,
                         "area": 1.0, "bbox": [0, 0, 1, 1]})
        for c in gt_caps:
            caps.append({"id": len(caps) + 1, "image_id": imid, "caption": c})
    info = {"description": "stic CHAIR fixture (synthetic)"}
    instances = {"info": info, "licenses": [], "categories": cats, "images": images, "annotations": inst}
    captions = {"info": info, "licenses": [], "images": images, "annotations": caps}
    empty_i = {"info": info, "licenses": [], "categories": cats, "images": [], "annotations": []}
    empty_c = {"info": info, "licenses": [], "images": [], "annotations": []}
    for name, obj in [("instances_val2014.json", instances), ("captions_val2014.json", captions),
                      ("instances_train2014.json", empty_i), ("captions_train2014.json", empty_c)]:
        with open(os.path.join(ann, name), "w") as f:
            json.dump(obj, f)

    # LURE tool/to_chair.py: one entry per answer, image_id an int, empty answers skipped; the
    # caption-metric fields that chair.py copies come from coco-caption and are 0 here.
    zero = dict((k, 0.0) for k in ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "CIDEr", "SPICE", "ROUGE_L"])
    img_to_eval = {}
    for i, (imid, cap) in enumerate(PREDICTIONS):
        if cap == "":
            continue
        e = {"image_id": imid, "caption": cap}
        e.update(zero)
        img_to_eval[str(i)] = e
    cap_file = os.path.join(work, "caps.json")
    with open(cap_file, "w") as f:
        json.dump({"overall": zero, "imgToEval": img_to_eval}, f)

    _, imids, _ = official.load_generated_captions(cap_file)
    evaluator = official.CHAIR(imids, ann)
    evaluator.get_annotations()
    out = evaluator.compute_chair(cap_file)

    if not os.path.isdir(FIX):
        os.makedirs(FIX)
    shutil.copy(os.path.join(ann, "instances_val2014.json"), FIX)
    shutil.copy(os.path.join(ann, "captions_val2014.json"), FIX)
    with open(os.path.join(FIX, "predictions.jsonl"), "w") as f:
        for imid, cap in PREDICTIONS:
            f.write(json.dumps({"key": str(imid), "question_id": imid, "text": cap}, sort_keys=True) + "\n")
    sentences = []
    for s in sorted(out["sentences"], key=lambda s: s["image_id"]):
        sentences.append({
            "image_id": s["image_id"],
            "gt_objects": sorted(s["mscoco_gt_words"]),
            "generated": s["mscoco_generated_words"],
            "hallucinated": [list(h) for h in s["mscoco_hallucinated_words"]],
            "chair_s": s["metrics"]["CHAIRs"],
            "chair_i": s["metrics"]["CHAIRi"],
        })
    expected = {
        "source": "LisaAnne/Hallucination utils/chair.py @ %s, run by scripts/gen_chair_fixtures.py" % HALLU_COMMIT,
        "chair_s": out["overall_metrics"]["CHAIRs"],
        "chair_i": out["overall_metrics"]["CHAIRi"],
        "sentences": sentences,
    }
    write_json(os.path.join(FIX, "expected.json"), expected)

    probes = []
    for c in PROBES + [c for _, c in PREDICTIONS] + [a["caption"] for a in caps]:
        words, node_words, _, raw = evaluator.caption_to_words(c)
        probes.append({"caption": c, "tokens": nltk.word_tokenize(c.lower()), "words": words,
                       "node_words": node_words, "double_words": raw})
    vocab = set(EXTRA_WORDS)
    for line in synonyms.decode("utf-8").splitlines():
        for s in line.strip().split(", "):
            vocab.add(s)
            vocab.add(s + "s")
            vocab.add(s + "es")
            vocab.add(inflect.pluralize(s))
    for p in probes:
        vocab.update(p["tokens"])
    sing = dict((w, inflect.singularize(w)) for w in sorted(vocab))
    write_json(os.path.join(FIX, "probes.json"), {"captions": probes, "singularize": sing})

    # Data files: the synonym list verbatim, and pattern's singularize tables.
    if not os.path.isdir(DATA):
        os.makedirs(DATA)
    with open(os.path.join(DATA, "chair_synonyms.txt"), "wb") as f:
        f.write(synonyms)
    lines = [
        u"# pattern.en singularize tables: clips/pattern pattern/text/en/inflect.py @ %s" % PATTERN_COMMIT,
        u"# (pattern 3.6; BSD 3-Clause, Copyright (c) 2011-2013 University of Antwerp, Belgium).",
        u"# Written by scripts/gen_chair_fixtures.py from the module's own objects. Sections:",
        u"# [prepositions] [uninflected] [uncountable] [ie] one word a line; [irregular] PLURAL SINGULAR;",
        u"# [rules] REGEX<TAB>REPLACEMENT in order (Python syntax; \\N is group N).",
        u"[prepositions]"] + sorted(inflect.plural_prepositions) + [u"[uninflected]"] + sorted(
        inflect.singular_uninflected) + [u"[uncountable]"] + sorted(inflect.singular_uncountable) + [
        u"[ie]"] + sorted(inflect.singular_ie) + [u"[irregular]"] + [
        u"%s %s" % (k, inflect.singular_irregular[k]) for k in sorted(inflect.singular_irregular)] + [
        u"[rules]"] + [u"%s\t%s" % (r.pattern, s) for r, s in inflect.singular_rules]
    with io.open(os.path.join(DATA, "pattern_en_singular.txt"), "w", encoding="utf-8") as f:
        f.write(u"\n".join(lines) + u"\n")
    print("CHAIRs %.6f CHAIRi %.6f" % (expected["chair_s"], expected["chair_i"]))
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
