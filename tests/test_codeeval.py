"""Code evaluation: pass@k, problems, extraction, prompt strategies, the CLI gate, resume."""

import json
import math
from pathlib import Path

import pytest

from apr_core import pipeline
from apr_core.errors import AprError
from apr_core.plugins import build, hookimpl, manager, use
from apr_eval.code.extraction import extract_code
from apr_eval.code.passk import mean_pass_at_k, pass_at_k
from apr_eval.code.problems import humaneval_path, load_problems
from apr_eval.code.programs import build_program
from apr_eval.code.task import strategy_of
from apr_eval.prompting.base import FENCE_STOPS, HUMANEVAL_STOPS, PromptOptions, PromptStrategy, base_stops
from apr_eval.sandbox import Limits, Sandbox, available_modes

from conftest import run_apr

DATA = Path(__file__).parent / "data"
MBPP = DATA / "mbpp-mini.jsonl"
HE = DATA / "humaneval-mini.jsonl"
needs_sandbox = pytest.mark.skipif(not available_modes(), reason="no isolating sandbox here")


# ----------------------------------------------------------------------------- pass@k
@pytest.mark.parametrize("n,c,k", [(10, 0, 1), (10, 10, 5), (5, 2, 1), (20, 3, 10), (7, 6, 2), (200, 13, 100)])
def test_pass_at_k_matches_the_combinatorial_definition(n, c, k):
    exact = 1 - math.comb(n - c, k) / math.comb(n, k)
    assert pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12)


def test_pass_at_k_reported_only_for_k_up_to_n():
    scores = mean_pass_at_k([(5, 1), (5, 0)], (1, 2, 10))
    assert set(scores) == {"pass@1", "pass@2"}
    assert scores["pass@1"] == pytest.approx(0.1)
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 4)


# ----------------------------------------------------------------------------- problems
def test_mbpp_fixture_and_entry_points():
    problems = load_problems(MBPP, want="mbpp")
    assert [p.entry_point for p in problems] == ["maximum", "reverse_words", "count_vowels", "circle_area",
                                                  "is_square"]
    assert load_problems(HE)[0].layout == "humaneval"


def test_packaged_humaneval_has_164_problems():
    assert len(load_problems(humaneval_path(), want="humaneval")) == 164


@pytest.mark.parametrize("content,message", [
    ("", "no problems"),
    ('{"task_id": 1, "text": "x", "test_list": ["assert f(1) == 1"]}\n{oops\n', ":2: not valid JSON"),
    ('{"task_id": 1, "foo": 2}\n', "needs fields"),
    ('{"task_id": 1, "text": "x", "test_list": []}\n', "non-empty list"),
])
def test_bad_problem_files(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(AprError, match=message):
        load_problems(path)


def test_layout_mismatch_is_refused():
    with pytest.raises(AprError, match="not a humaneval record"):
        load_problems(MBPP, want="humaneval")


# ----------------------------------------------------------------------------- extraction
def test_extract_fenced_block_defining_the_entry_point():
    reply = ("Here is a helper:\n```python\nx = 1\n```\nAnd the answer:\n```python\n"
             "def f(a):\n    return a + 1\n\nprint(f(2))\n```\nHope it helps!")
    assert extract_code(reply, "f") == "def f(a):\n    return a + 1\n"


def test_extract_prefilled_fence_and_trailing_chatter():
    reply = "def f(a):\n    return a * 2\nThis doubles a.\n```\nmore text"
    code = extract_code(reply, "f", stops=FENCE_STOPS, prefill="```python\n")
    assert code == "def f(a):\n    return a * 2\n"


def test_extract_unterminated_block_and_main_guard():
    reply = "```python\nimport math\n\ndef f(a):\n    return math.sqrt(a)\n\nif __name__ == '__main__':\n    f(4)"
    assert extract_code(reply, "f") == "import math\ndef f(a):\n    return math.sqrt(a)\n"


def test_extract_body_continuation_cut_at_stops():
    prompt = "def f(a):\n    \"\"\"Doc.\"\"\"\n"
    reply = "    return a - 1\n\n\ndef test():\n    assert f(1) == 0\n"
    assert extract_code(reply, "f", prompt, HUMANEVAL_STOPS) == "    return a - 1\n"


def test_program_re_adds_prompt_imports_for_whole_function_replies():
    p = load_problems(HE)[0]  # prompt imports List
    program = build_program(p, "def total(xs: List[int]) -> int:\n    return sum(xs)\n")
    assert program.candidate.startswith("from typing import List")
    assert "check" not in program.candidate  # the tests run in the referee, not beside the completion
    assert program.context == p.prompt and program.entry == "total"
    assert program.tests.rstrip().endswith("check(total)")


# ----------------------------------------------------------------------------- prompt strategies
def _mbpp():
    return load_problems(MBPP)[0]


def test_standard_chat_prefills_a_fence_and_mbpp_shows_assertions():
    s = strategy_of("standard")
    prompt = s.build(_mbpp(), True, PromptOptions())
    assert prompt.prefill.startswith("```python") and "assert maximum(1, 2) == 2" in prompt.messages[-1]["content"]
    ablated = s.build(_mbpp(), True, PromptOptions(test_assertions=False))
    assert "assert" not in ablated.messages[-1]["content"] and "maximum" in ablated.messages[-1]["content"]
    base = s.build(_mbpp(), False, PromptOptions())
    assert base.text.endswith("[BEGIN]\n") and "[DONE]" in base.stops


def test_few_shot_default_and_custom_exemplars():
    s = strategy_of("few-shot")
    he = load_problems(HE)[1]
    chat = s.build(he, True, PromptOptions())
    assert len(chat.messages) == 3 and "return a + b" in chat.messages[1]["content"]
    base = s.build(he, False, PromptOptions())
    assert base.text.index("return a + b") < base.text.index("def is_palindrome")
    custom = s.build(he, True, PromptOptions(exemplars=load_problems(HE)[:2]))
    assert len(custom.messages) == 5 and "return sum(xs)" in custom.messages[1]["content"]


@pytest.mark.parametrize("name,word", [("cgo", "objectives"), ("scot", "sequence, branch")])
def test_reasoning_strategies_ask_for_reasoning_first(name, word):
    prompt = strategy_of(name).build(load_problems(HE)[0], True, PromptOptions())
    assert word in prompt.messages[-1]["content"] and prompt.prefill == "" and prompt.stops == ()


def test_a_third_party_strategy_plugs_in():
    class Shouty(PromptStrategy):
        name = "shouty"
        summary = "upper-case task"

        def instruction(self, problem, options):
            return super().instruction(problem, options).upper()

    class Plugin:
        @hookimpl
        def apr_register_techniques(self, register):
            register(Shouty())

    use(build(extra_plugins=[("shouty", Plugin())]))
    try:
        prompt = strategy_of("shouty").build(_mbpp(), True, PromptOptions())
        assert "WRITE A FUNCTION" in prompt.messages[0]["content"]
    finally:
        use(None)
    with pytest.raises(AprError, match="unknown prompt-strategy"):
        strategy_of("shouty")


# ----------------------------------------------------------------------------- execution path
@needs_sandbox
def test_reference_solutions_pass_and_broken_ones_fail():
    problems = load_problems(MBPP) + load_problems(HE)
    with Sandbox(available_modes()[0], Limits(timeout_s=20), workers=2) as box:
        good = box.run_many([build_program(p, extract_code(p.reference, p.entry_point, p.prompt, base_stops(p)))
                             for p in problems])
        bad = box.run_many([build_program(p, extract_code(
            p.reference.replace("return", "return None and", 1) if p.layout == "mbpp" else "    return None\n" + p.reference,
            p.entry_point, p.prompt, base_stops(p))) for p in problems])
    assert all(v.passed for v in good), [v.detail for v in good]
    assert not any(v.passed for v in bad)


# ----------------------------------------------------------------------------- CLI and runs
def test_cli_refuses_without_consent_before_loading_anything(tmp_path):
    out = tmp_path / "s.jsonl"
    proc = run_apr("eval", str(tmp_path / "missing.apr"), "--task", "humaneval", "--data", str(HE),
                   "--results", str(out), env={"APR_ALLOW_CODE_EXECUTION": ""})
    assert proc.returncode == 2 and "--allow-code-execution" in proc.stderr and not out.exists()
    assert proc.stderr.count("\n") == 1


@pytest.mark.parametrize("args,message", [
    (("--prompt-strategy", "nope"), "unknown prompt-strategy technique 'nope'"),
    (("--samples", "3"), "greedy decoding"),
    (("--isolation", "none"), "unsafe-no-isolation"),
])
def test_cli_bad_options(tmp_path, args, message):
    proc = run_apr("eval", str(tmp_path / "missing.apr"), "--task", "mbpp", "--data", str(MBPP),
                   "--allow-code-execution", *args)
    assert proc.returncode == 2 and message in proc.stderr


@needs_sandbox
def test_seed_form_runs_and_resumes(tmp_path, llama_apr):
    """``apr eval model.apr --task humaneval --data humaneval.jsonl --json`` (consent from the env)."""
    results = tmp_path / "samples.jsonl"
    args = ("eval", llama_apr, "--task", "humaneval", "--data", str(HE), "--json", "--max-tokens", "6",
            "--results", str(results))
    first = run_apr(*args, env={"APR_ALLOW_CODE_EXECUTION": "1"}, check=True)
    record = json.loads(first.stdout)
    assert record["metric"] == "pass@1" and record["problems"] == 3 and record["sandbox"] in available_modes()
    lines = results.read_text().splitlines()
    assert json.loads(lines[0])["header"]["task"] == "humaneval" and len(lines) == 4
    assert len(Path(record["task_results"]).read_text().splitlines()) == 3
    second = run_apr(*args, env={"APR_ALLOW_CODE_EXECUTION": "1"}, check=True)
    assert "3 samples already done" in second.stderr
    assert json.loads(second.stdout)["value"] == record["value"]


@needs_sandbox
def test_sampling_resume_skips_finished_samples(tmp_path, llama_apr, monkeypatch):
    import apr_eval.code.generation as generation

    model = pipeline.load(llama_apr)
    params = {"data": str(MBPP), "allow_code_execution": True, "samples": "3", "temperature": "0.8",
              "k": "1,2,10", "max_tokens": "5", "limit": "2", "results": str(tmp_path / "r.jsonl")}
    from apr_core.technique import RunContext

    first = pipeline.evaluate("mbpp", model, params, RunContext(seed=3, quiet=True))
    assert set(first["pass_at_k"]) == {"pass@1", "pass@2"}
    # drop two samples as if the run had been killed; only those are generated again
    lines = (tmp_path / "r.jsonl").read_text().splitlines()
    (tmp_path / "r.jsonl").write_text("\n".join(lines[:-2]) + "\n" + lines[-2][:10])
    calls = []
    real = generation.generate_batch
    monkeypatch.setattr(generation, "generate_batch", lambda m, t, texts, *a, **k: calls.append(len(texts)) or
                        real(m, t, texts, *a, **k))
    second = pipeline.evaluate("mbpp", model, params, RunContext(seed=3, quiet=True))
    assert calls == [2]
    assert second["pass_at_k"] == first["pass_at_k"]


@pytest.mark.slow
@needs_sandbox
def test_humaneval_gate_all_canonical_pass_and_broken_fail():
    """The 164 canonical solutions pass and a broken variant of each fails, through the path model
    completions take (a base-model continuation: stop sequences, extraction, program, sandbox)."""
    problems = load_problems(humaneval_path(), want="humaneval")
    with Sandbox(available_modes()[0], Limits(timeout_s=30)) as box:
        good = box.run_many([build_program(p, extract_code(p.reference, p.entry_point, p.prompt, base_stops(p)))
                             for p in problems])
        bad = box.run_many([build_program(p, extract_code("    return None\n" + p.reference, p.entry_point,
                                                          p.prompt, base_stops(p))) for p in problems])
    assert [p.task_id for p, v in zip(problems, good) if not v.passed] == []
    assert [p.task_id for p, v in zip(problems, bad) if v.passed] == []
