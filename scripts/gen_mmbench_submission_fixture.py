#!/usr/bin/env python3
"""Fixture for issue #18: the MMBench submission file as LLaVA's own
scripts/convert_mmbench_for_submission.py (haotian-liu/LLaVA at LLAVA_COMMIT) writes it
(tests/fixtures/eval/llava_answers/mmbench/).

    python3 -m venv /root/xlsxenv && /root/xlsxenv/bin/pip install pandas==2.3.3 openpyxl==3.1.5
    /root/xlsxenv/bin/python scripts/gen_mmbench_submission_fixture.py --llava LLAVA_GIT_DIR

It writes a small MMBench-style TSV (the dev file's columns; option columns that pandas reads as
int64, as float64 with NaN, as bool, and as strings with pandas' NA words such as "None"), an
answer file in the format LLaVA's model_vqa_mmbench writes (`question_id` = the row's index,
`round_id`, `prompt`, `text`, `options`, `option_char`, `answer_id`, `model_id`, `metadata`) with
an index answered in two rounds, an index answered twice, an unanswered row, a line naming no row
and a line whose `question_id` is a string; runs the official script on them; and records every
cell of the .xlsx it wrote, read back with openpyxl (value and openpyxl data type), in
expected.json.
"""
import argparse
import json
import os
import runpy
import subprocess
import sys
import tempfile

import openpyxl

LLAVA_COMMIT = "c121f0432da27facab705978f83c4ada465e46fd"
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
FIX = os.path.join(ROOT, "tests", "fixtures", "eval", "llava_answers", "mmbench")

HEADER = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image", "source", "l2-category", "comment", "split"]
ROWS = [
    # index, question, hint, A, B, C, D, answer, category, image, source, l2, comment, split
    ["0", "How many dots?", "nan", "1", "2.5", "True", "one", "A", "counting", "aGk=", "synthetic", "perception", "", "dev"],
    ["1", "Which colour?", "A hint.", "3", "", "False", "None", "B", "attribute", "aGk=", "synthetic", "perception", "", "dev"],
    ["2", "Is it round?", "", "5", "7", "True", "NA", "C", "attribute", "aGk=", "synthetic", "reasoning", "", "dev"],
    ["3", "=1+1 looks like a formula", "", "11", "0.125", "False", "n/a", "D", "logic", "aGk=", "synthetic", "reasoning", "", "dev"],
    ["4", "Last one?", "", "-2", "1e3", "True", "two words", "A", "logic", "aGk=", "synthetic", "reasoning", "", "dev"],
]


def answer(qid, rnd, text, n):
    return {"question_id": qid, "round_id": rnd, "prompt": "Q", "text": text, "options": ["x", "y"], "option_char": ["A", "B"],
            "answer_id": f"fixture{n}", "model_id": "llava-v1.5-13b", "metadata": {}}


ANSWERS = [
    answer(0, 0, "A", 0),
    answer(0, 1, "B", 1),        # round 1 of index 0: the later line wins the cell
    answer(1, 0, "The answer is B.", 2),
    answer(3, 0, "C", 3),
    answer(99, 0, "D", 4),       # names no row: changes nothing
    answer("4", 0, "A", 5),      # a string id: matches no int64 index
    answer(3, 0, "D", 6),        # index 3 answered again: the later line wins
    # index 2 and 4: unanswered, their prediction cells stay empty
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--llava", required=True, help="a git directory of haotian-liu/LLaVA holding LLAVA_COMMIT")
    a = ap.parse_args()
    src = subprocess.run(["git", "-C", a.llava, "show", f"{LLAVA_COMMIT}:scripts/convert_mmbench_for_submission.py"], check=True, capture_output=True, text=True).stdout
    os.makedirs(FIX, exist_ok=True)
    with open(os.path.join(FIX, "mmbench_sub.tsv"), "w") as f:
        f.write("\t".join(HEADER) + "\n")
        for r in ROWS:
            f.write("\t".join(r) + "\n")
    with open(os.path.join(FIX, "answers.jsonl"), "w") as f:
        for r in ANSWERS:
            f.write(json.dumps(r) + "\n")
    with tempfile.TemporaryDirectory() as tmp:
        script = os.path.join(tmp, "convert_mmbench_for_submission.py")
        open(script, "w").write(src)
        res = os.path.join(tmp, "res")
        os.makedirs(res)
        with open(os.path.join(res, "answers.jsonl"), "w") as f:
            for r in ANSWERS:
                f.write(json.dumps(r) + "\n")
        sys.argv = [script, "--annotation-file", os.path.join(FIX, "mmbench_sub.tsv"), "--result-dir", res, "--upload-dir", tmp, "--experiment", "answers"]
        runpy.run_path(script, run_name="__main__")
        wb = openpyxl.load_workbook(os.path.join(tmp, "answers.xlsx"))
        ws = wb.active
        cells = [[{"type": c.data_type, "value": c.value} for c in row] for row in ws.iter_rows()]
    json.dump({"llava_commit": LLAVA_COMMIT, "pandas": __import__("pandas").__version__, "openpyxl": openpyxl.__version__, "sheet": ws.title, "cells": cells},
              open(os.path.join(FIX, "expected.json"), "w"), indent=1)
    print(json.dumps(cells))


if __name__ == "__main__":
    main()
