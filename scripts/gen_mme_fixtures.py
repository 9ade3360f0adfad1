#!/usr/bin/env python3
"""Fixture for `stic eval --bench mme` (tests/fixtures/eval/mme), scored by the official MME tool.

The tool is `eval_tool/calculation.py` inside tools/eval_tool.zip of
github.com/BradyFU/Awesome-Multimodal-Large-Language-Models (branch Evaluation), read at
EVAL_TOOL_COMMIT with `git show`. It needs scikit-learn:

    python3 -m venv /root/mmeenv && /root/mmeenv/bin/pip install scikit-learn
    /root/mmeenv/bin/python scripts/gen_mme_fixtures.py --awesome AWESOME_GIT_DIR

The script writes a small MME_Benchmark_release_version (both layouts of the release: a subtask
folder with `questions_answers_YN/` + `images/`, or the question files beside the images; no image
pixels, the scorer does not read them), stic's predictions.jsonl for it, and the official tool's
input (one `SUBTASK.txt` per subtask, lines `image<TAB>question<TAB>gt<TAB>answer`, the two
questions of an image on consecutive lines, the layout calculation.py reads), runs
the tool on that folder and records its numbers in expected.json.
"""
import argparse
import io
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import zipfile
from contextlib import redirect_stdout

EVAL_TOOL_COMMIT = "1c1d69e138b57cf8b0400427927bfb8ed4285458"

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
FIX = os.path.join(ROOT, "tests", "fixtures", "eval", "mme")

PERCEPTION = ["existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR"]
COGNITION = ["commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning"]
NESTED = {"posters", "celebrity", "scene", "landmark", "artwork"}  # questions_answers_YN/ + images/

# Answers a model may give, with the tool's reading noted.
ANSWERS = [
    "Yes", "No", "yes", "no", "Yes, there is.", "No, there is not.", "Not sure",  # yes/no/no
    "The answer is yes", "I cannot tell", "Y", "nope", "YES.", "Noo", "n", "yes no",
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--awesome", required=True, help="git dir of BradyFU/Awesome-Multimodal-Large-Language-Models")
    args = ap.parse_args()
    blob = subprocess.check_output(["git", "--git-dir", args.awesome, "show", EVAL_TOOL_COMMIT + ":tools/eval_tool.zip"])
    src = zipfile.ZipFile(io.BytesIO(blob)).read("eval_tool/calculation.py").decode()
    work = tempfile.mkdtemp(prefix="mme-official-")
    with open(os.path.join(work, "calculation.py"), "w") as f:
        f.write(src)

    rng = random.Random(16)
    rel = os.path.join(FIX, "MME_Benchmark_release_version")
    results = os.path.join(work, "results")
    os.makedirs(results)
    preds = []
    for task in PERCEPTION + COGNITION:
        qdir = os.path.join(rel, task, "questions_answers_YN") if task in NESTED else os.path.join(rel, task)
        os.makedirs(qdir, exist_ok=True)
        lines = []
        for k in range(rng.choice([2, 3])):
            stem = "%s_%04d" % (task.lower(), k)
            gts = rng.choice([("Yes", "No"), ("No", "Yes")])
            qs = ["Is there a %s %d in the image? Please answer yes or no." % (task, j) for j in range(2)]
            with open(os.path.join(qdir, stem + ".txt"), "w") as f:
                f.write("".join("%s\t%s\n" % (q, a) for q, a in zip(qs, gts)))
            for j in range(2):
                ans = rng.choice(ANSWERS)
                image = stem + ".jpg"
                preds.append({"key": "%s/%s/%d" % (task, image, j), "question_id": "%s/%s" % (task, image), "text": ans})
                lines.append("%s\t%s\t%s\t%s\n" % (image, qs[j], gts[j], ans))
        with open(os.path.join(results, task + ".txt"), "w") as f:
            f.write("".join(lines))
    with open(os.path.join(FIX, "predictions.jsonl"), "w") as f:
        for p in preds:
            f.write(json.dumps(p) + "\n")

    sys.path.insert(0, work)
    sys.argv = ["calculation.py"]
    import calculation as official
    recorded = []
    orig = official.calculate_metrics.compute_metric

    def compute_metric(self, gts, preds):
        d = orig(self, gts, preds)
        recorded.append(d)  # process_result adds acc_plus to this dict afterwards
        return d

    official.calculate_metrics.compute_metric = compute_metric
    buf = io.StringIO()
    with redirect_stdout(buf):
        official.calculate_metrics().process_result(results)
    out = buf.getvalue()
    totals = [float(x) for x in re.findall(r"total score: ([0-9.eE+-]+)", out)]
    scores = dict((m.group(1), float(m.group(2))) for m in re.finditer(r"\t (\S+)  score: ([0-9.eE+-]+)", out))
    subtasks = {}
    for task, d in zip(PERCEPTION + COGNITION, recorded):
        subtasks[task] = {"score": scores[task], "acc": float(d["acc"]), "acc_plus": float(d["acc_plus"]),
                          "other_num": int(d["other_num"])}
    expected = {"source": "MME eval_tool/calculation.py @ %s, run by scripts/gen_mme_fixtures.py" % EVAL_TOOL_COMMIT,
                "perception": totals[0], "cognition": totals[1], "subtasks": subtasks, "tool_output": out}
    with open(os.path.join(FIX, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1, sort_keys=True)
        f.write("\n")
    print(out)


if __name__ == "__main__":
    main()
