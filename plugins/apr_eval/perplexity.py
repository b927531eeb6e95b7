"""Perplexity on a corpus, with the protocol of the pruning papers (Wanda, SparseGPT).

Documents are joined with blank lines and tokenized once; the token stream
is cut into non-overlapping windows of the model's context length (or
``--seq-len``), any partial last window is dropped, and perplexity is
exp(mean token cross-entropy) over every predicted token. A stream shorter
than one window is evaluated as a single window.
"""

from __future__ import annotations

import math
import time
from typing import Any

from apr_core.errors import AprError
from apr_core.params import Param
from apr_core.plugins import hookimpl
from apr_core.technique import EvaluateTechnique

LOGIT_CHUNK = 1024  # positions per lm_head call: bounds logits memory for 150k-token vocabularies


class Perplexity(EvaluateTechnique):
    name = "perplexity"
    summary = "exp(mean token cross-entropy) over non-overlapping windows of a corpus"
    paper = "Sun et al. 2023 (Wanda) / Frantar & Alistarh 2023 (SparseGPT) evaluation protocol"
    params = (
        Param("dataset", "str", "stdlib-code",
              "Corpus: stdlib-code (alias code), python-docs (alias prose), wikitext-2, or a file "
              "(raw text, jsonl or parquet with a text field)"),
        Param("seq_len", "int", None, "Window length in tokens (default: the model's context length)", min=2),
        Param("max_tokens", "int", None, "Evaluate only the first N tokens of the corpus", min=2),
        Param("batch_size", "int", 1, "Windows per forward pass", min=1),
        Param("text_field", "str", "text", "Field holding the text in jsonl/parquet files"),
        Param("dtype", "choice", "float32", "Compute dtype", choices=("float32", "bfloat16", "float16")),
    )

    def contract_params(self, workdir, inputs):
        sample = workdir / "ppl-sample.txt"
        sample.write_text("def add(a, b):\n    return a + b\n\n" * 20)
        return {"dataset": str(sample), "seq_len": "32"}

    def evaluate(self, model, params: dict[str, Any], context) -> dict[str, Any]:
        import torch

        from apr_core.corpora import load_corpus
        from apr_core.torch_bridge import load_tokenizer, quiet_transformers, to_transformers

        corpus = load_corpus(params["dataset"], params["text_field"])
        tokenizer = load_tokenizer(model)
        with quiet_transformers():  # the whole corpus is longer than model_max_length by design
            ids = tokenizer(corpus.text, return_attention_mask=False)["input_ids"]
        if params["max_tokens"]:
            ids = ids[: params["max_tokens"]]
        if len(ids) < 2:
            raise AprError(f"{corpus.name}: fewer than 2 tokens to evaluate")
        seq_len = params["seq_len"] or int(model.text_config().get("max_position_embeddings") or 2048)
        n_windows = len(ids) // seq_len
        if n_windows == 0:
            seq_len, n_windows = len(ids), 1
        tokens = torch.tensor(ids[: n_windows * seq_len], dtype=torch.long).view(n_windows, seq_len)
        module = to_transformers(model, dtype=params["dtype"], device=context.device)
        start = time.perf_counter()
        nll, count = window_nll(module, tokens, params["batch_size"], context)
        seconds = time.perf_counter() - start
        ce = nll / count
        ppl = math.exp(ce)
        return {
            "metric": "perplexity",
            "value": ppl,
            "higher_is_better": False,
            "mean_cross_entropy": ce,
            "dataset": corpus.name,
            "dataset_sha256": corpus.sha256,
            "tokens": count,
            "windows": n_windows,
            "seq_len": seq_len,
            "dtype": params["dtype"],
            "seconds": round(seconds, 3),
            "tokens_per_second": round(n_windows * seq_len / seconds, 1) if seconds > 0 else None,
            "summary": f"perplexity {ppl:.4f} on {corpus.name} ({count} predicted tokens, "
                       f"{n_windows} windows of {seq_len})",
        }


def window_nll(module, tokens, batch_size: int, context) -> tuple[float, int]:
    """Summed next-token negative log-likelihood (nats) over all windows, and the token count."""
    import torch
    import torch.nn.functional as F

    decoder = module.get_decoder()
    head = module.get_output_embeddings()
    cap = getattr(module.config, "final_logit_softcapping", None)
    total, count = 0.0, 0
    batches = range(0, tokens.shape[0], batch_size)
    with torch.inference_mode():
        for b in context.progress(batches, desc="perplexity", total=len(batches)):
            batch = tokens[b: b + batch_size].to(context.device)
            hidden = decoder(input_ids=batch).last_hidden_state
            for s in range(0, batch.shape[1] - 1, LOGIT_CHUNK):
                e = min(s + LOGIT_CHUNK, batch.shape[1] - 1)
                logits = head(hidden[:, s:e]).float()
                if cap:
                    logits = torch.tanh(logits / cap) * cap
                target = batch[:, s + 1: e + 1]
                total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                         reduction="sum").item()
                count += target.numel()
    return total, count


@hookimpl
def apr_register_techniques(register):
    register(Perplexity())
