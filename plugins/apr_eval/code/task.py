"""The shared engine of the code tasks: prompts -> batched generation -> extraction -> sandbox -> pass@k.

A subclass names its task and says where its problems come from (`CodeTask.problems`). The run:

1. the opt-in ``--allow-code-execution`` is checked with the other options, before the model is
   even loaded (`check`); then the sandbox is opened and self-tested, before any generation;
2. pending samples (those not already in the results jsonl) are generated in batches, each
   reply's code extracted and assembled into a test program, the batch run in the sandbox in
   parallel, and its records appended to the jsonl (so an interrupted run resumes);
3. pass@k (Chen et al. 2021) is computed for each k no larger than the samples per problem.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from apr_core.atomic import check_destination
from apr_core.errors import AprError
from apr_core.params import Param
from apr_core.technique import EvaluateTechnique

from .extraction import extract_code
from .passk import mean_pass_at_k
from .problems import Problem, file_sha256, load_problems
from .results import SampleStore, write_task_results

CONSENT_ENV = "APR_ALLOW_CODE_EXECUTION"  # the same consent, for wrappers such as the Makefile

SANDBOX_PARAMS = (
    Param("allow_code_execution", "bool", False,
          "Required: consent to execute model-written code (in the sandbox; see docs/eval.md)"),
    Param("isolation", "choice", "auto", "Sandbox backend: auto (bwrap, else namespaces), bwrap, namespaces, "
          "or none (needs --unsafe-no-isolation)", choices=("auto", "bwrap", "namespaces", "none")),
    Param("unsafe_no_isolation", "bool", False,
          "Run generated code as a plain subprocess where no sandbox is available (dangerous)"),
    Param("timeout", "float", 10.0, "Wall-clock seconds per sample before the parent kills it", min=0.1),
    Param("memory_mb", "int", 1024, "Address-space limit per sample (MiB)", min=64),
    Param("workers", "int", None, "Samples executed in parallel (default: CPU count)", min=1),
)

GENERATION_PARAMS = (
    Param("prompt_strategy", "str", "standard", "Prompt strategy: standard, few-shot, cgo, scot or a plugin's"),
    Param("exemplars", "path", None, "few-shot: jsonl of solved exemplars (HumanEval or MBPP layout)"),
    Param("test_assertions", "bool", True, "MBPP: show the test assertions in the prompt (--no-test-assertions)"),
    Param("chat", "bool", None, "Use the chat template (default: when the model has one)"),
    Param("samples", "int", 1, "Samples per problem (n of pass@k)", min=1),
    Param("temperature", "float", 0.0, "Sampling temperature; 0 = greedy", min=0.0),
    Param("top_p", "float", 0.95, "Nucleus sampling mass when sampling", min=0.0, max=1.0, min_exclusive=True),
    Param("max_tokens", "int", 512, "Most new tokens per sample", min=1),
    Param("batch_size", "int", 8, "Prompts per generation batch", min=1),
    Param("k", "ints", (1, 10, 100), "pass@k values to report (only those with k <= samples)", min=1),
    Param("limit", "int", None, "Evaluate only the first N problems", min=1),
    Param("results", "path", None, "Samples jsonl (default runs/eval/<task>-<settings hash>.jsonl)"),
    Param("resume", "bool", True, "Keep finished samples of an identical earlier run (--no-resume)"),
)

# Two MBPP-layout problems for the contract suite (`contract_params`), written to its workdir.
MBPP_CONTRACT_PROBLEMS = (
    {"task_id": 1, "text": "Write a function to add two numbers.", "code": "def add(a, b):\n    return a + b",
     "test_list": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"], "test_setup_code": "",
     "challenge_test_list": []},
    {"task_id": 2, "text": "Write a function to double a number.", "code": "def double(x):\n    return 2 * x",
     "test_list": ["assert double(2) == 4"], "test_setup_code": "", "challenge_test_list": []},
)


class CodeTask(EvaluateTechnique):
    """Base of the code-generation tasks; subclasses implement `problems`."""

    data_param = Param("data", "path", None, "Problems jsonl(.gz), HumanEval or MBPP layout")
    paper = "Chen et al. 2021 (HumanEval, unbiased pass@k)"
    #: problems (jsonl records of the task's layout) the contract suite evaluates on
    contract_problems: tuple[dict[str, Any], ...] = MBPP_CONTRACT_PROBLEMS

    @property
    def params(self):  # type: ignore[override]
        return (self.data_param,) + GENERATION_PARAMS + SANDBOX_PARAMS

    def problems(self, params: dict[str, Any]) -> tuple[list[Problem], str]:
        """The problems to evaluate and the file they came from."""
        raise NotImplementedError

    # ------------------------------------------------------------------ validation
    def check(self, params: dict[str, Any]) -> None:
        if not (params["allow_code_execution"] or os.environ.get(CONSENT_ENV) == "1"):
            raise AprError(f"{self.name} executes model-written code: pass --allow-code-execution (or set "
                           f"{CONSENT_ENV}=1) to consent; it runs sandboxed (see docs/eval.md)")
        if params["isolation"] == "none" and not params["unsafe_no_isolation"]:
            raise AprError("--isolation none runs model code unisolated; add --unsafe-no-isolation to insist")
        if params["temperature"] == 0 and params["samples"] > 1:
            raise AprError("greedy decoding (--temperature 0) gives identical samples; use --temperature > 0 "
                           "with --samples > 1")
        if min(params["k"]) > params["samples"]:
            raise AprError(f"--k {','.join(str(k) for k in params['k'])}: every k is above --samples "
                           f"{params['samples']}; pass@k needs k <= samples (add --k 1)")
        strategy_of(params["prompt_strategy"])
        if params["exemplars"] and not Path(params["exemplars"]).is_file():
            raise AprError(f"no such exemplars file: {params['exemplars']}")
        self.problems(params)  # a bad --data is one line before the model is even loaded

    def contract_params(self, workdir, inputs):
        data = Path(workdir) / "contract-problems.jsonl"
        data.write_text("".join(json.dumps(p) + "\n" for p in self.contract_problems))
        return {"data": str(data),
                # the sandbox when this machine has one; the 8-token outputs of a random tiny model
                # may run unisolated where it has none, so the contract holds on any CI machine
                "allow_code_execution": True, "unsafe_no_isolation": True, "max_tokens": "8", "limit": "2",
                "results": str(Path(workdir) / "contract-samples.jsonl")}

    # ------------------------------------------------------------------ run
    def evaluate(self, model, params: dict[str, Any], context) -> dict[str, Any]:
        from ..prompting.base import PromptOptions
        from ..sandbox import Limits, open_sandbox

        problems, source = self.problems(params)
        if params["limit"]:
            problems = problems[: params["limit"]]
        strategy = strategy_of(params["prompt_strategy"])
        exemplars = load_problems(params["exemplars"]) if params["exemplars"] else []
        options = PromptOptions(test_assertions=params["test_assertions"], exemplars=exemplars)
        chat = params["chat"] if params["chat"] is not None else bool(model.chat_template)
        dtype = context.compute_dtype(model=model)
        header = self._header(model, params, source, chat, context.seed, dtype)
        results_path = params["results"] or os.path.join(
            "runs", "eval", f"{self.name}-{hashlib.sha256(json.dumps(header, sort_keys=True).encode()).hexdigest()[:12]}.jsonl")
        check_destination(results_path, [source, params["exemplars"], *model.files], force=None)
        store = SampleStore(results_path, header, resume=params["resume"])
        pending = [(p, s) for p in problems for s in range(params["samples"]) if not store.has(p.task_id, s)]
        if len(pending) < len(problems) * params["samples"]:
            context.log(f"{self.name}: resuming {results_path}: "
                        f"{len(problems) * params['samples'] - len(pending)} samples already done")
        limits = Limits(timeout_s=params["timeout"], memory_mb=params["memory_mb"])
        gen_tokens, gen_seconds, exec_seconds = 0, 0.0, 0.0
        sandbox = open_sandbox(params["isolation"], params["unsafe_no_isolation"], limits, params["workers"],
                               log=context.log)
        try:
            if pending:
                gen_tokens, gen_seconds, exec_seconds = self._run(
                    model, params, context, pending, strategy, options, chat, store, sandbox, dtype)
            mode = sandbox.mode
        finally:
            sandbox.close()
        result = self._score(problems, params, store, results_path, strategy.name, chat, mode,
                             gen_tokens, gen_seconds, exec_seconds)
        result.update(dtype=dtype, device=context.device)
        return result

    def _header(self, model, params, source, chat, seed, dtype) -> dict[str, Any]:
        keys = ("prompt_strategy", "test_assertions", "temperature", "top_p", "max_tokens")
        header = {k: params[k] for k in keys}
        header.update(task=self.name, dtype=dtype, data_sha256=file_sha256(source), chat=chat, seed=seed,
                      model=model.fingerprint() or model.source,
                      exemplars_sha256=file_sha256(params["exemplars"]) if params["exemplars"] else None)
        return header

    def _run(self, model, params, context, pending, strategy, options, chat, store, sandbox, dtype):
        from apr_core.torch_bridge import load_tokenizer, to_transformers

        from .generation import batch_seed, generate_batch
        from .programs import build_program  # imports the sandbox: not at plugin discovery

        tokenizer = load_tokenizer(model)
        module = to_transformers(model, dtype=dtype, device=context.device)
        gen_tokens, gen_seconds, exec_seconds = 0, 0.0, 0.0
        prompts = {p.task_id: strategy.build(p, chat, options) for p, _ in pending}
        size = params["batch_size"]
        batches = [pending[i: i + size] for i in range(0, len(pending), size)]
        for batch in context.progress(batches, desc=f"{self.name} ({strategy.name})", total=len(batches)):
            texts, stops = [], []
            for problem, _ in batch:
                prompt = prompts[problem.task_id]
                texts.append(render(tokenizer, prompt, chat))
                stops.append(prompt.stops)
            start = time.perf_counter()
            generated = generate_batch(
                module, tokenizer, texts, stops, max_new_tokens=params["max_tokens"],
                temperature=params["temperature"], top_p=params["top_p"],
                seed=batch_seed(context.seed, [f"{p.task_id}#{s}" for p, s in batch]),
                add_special_tokens=not chat)
            gen_seconds += time.perf_counter() - start
            gen_tokens += sum(g.tokens for g in generated)
            codes = [extract_code(g.text, p.entry_point, p.prompt, prompts[p.task_id].stops,
                                  prompts[p.task_id].prefill) for g, (p, _) in zip(generated, batch)]
            start = time.perf_counter()
            verdicts = sandbox.run_many([build_program(p, c) for c, (p, _) in zip(codes, batch)])
            exec_seconds += time.perf_counter() - start
            store.append({"task_id": p.task_id, "sample": s, "completion": g.text, "code": c,
                          "tokens": g.tokens, "passed": v.passed, "status": v.status, "detail": v.detail}
                         for (p, s), g, c, v in zip(batch, generated, codes, verdicts))
        return gen_tokens, gen_seconds, exec_seconds

    def _score(self, problems, params, store, results_path, strategy, chat, mode,
               gen_tokens, gen_seconds, exec_seconds) -> dict[str, Any]:
        rows, counts = [], []
        for p in problems:
            recs = [store.done[(p.task_id, s)] for s in range(params["samples"])]
            c = sum(r["passed"] for r in recs)
            counts.append((len(recs), c))
            rows.append({"task_id": p.task_id, "n": len(recs), "correct": c,
                         **mean_pass_at_k([(len(recs), c)], params["k"])})
        tasks_path = str(Path(results_path).with_suffix("")) + ".tasks.jsonl"
        write_task_results(tasks_path, rows)
        scores = mean_pass_at_k(counts, params["k"])
        if not scores:
            raise AprError(f"no pass@k with k <= {params['samples']} samples; add --k 1")
        metric = "pass@1" if "pass@1" in scores else next(iter(scores))
        executed = len(rows) * params["samples"]
        summary = ", ".join(f"{k} {v * 100:.2f}%" for k, v in scores.items())
        return {
            "metric": metric, "value": scores[metric], "higher_is_better": True, "pass_at_k": scores,
            "task": self.name, "problems": len(problems), "samples_per_problem": params["samples"],
            "passed": sum(c for _, c in counts), "prompt_strategy": strategy, "chat": chat,
            "temperature": params["temperature"], "max_tokens": params["max_tokens"], "sandbox": mode,
            "results": str(results_path), "task_results": tasks_path,
            "seconds": round(gen_seconds + exec_seconds, 3),
            "tokens_per_second": round(gen_tokens / gen_seconds, 1) if gen_seconds > 0 else None,
            "samples_per_second": round(executed / exec_seconds, 2) if exec_seconds > 0 else None,
            "summary": f"{self.name} ({strategy}{', chat' if chat else ''}): {summary} over "
                       f"{len(problems)} problems x {params['samples']} samples",
        }


def strategy_of(name: str):
    from apr_core.plugins import manager

    from ..prompting.base import KIND

    return manager()[1].get(KIND, name)


def render(tokenizer, prompt, chat: bool) -> str:
    """The exact text fed to the model: chat template + pre-filled reply, or the plain prompt."""
    if not chat:
        return prompt.text
    if not getattr(tokenizer, "chat_template", None):
        raise AprError("the model has no chat template; use --no-chat")
    text = tokenizer.apply_chat_template(prompt.messages, tokenize=False, add_generation_prompt=True)
    return text + prompt.prefill
