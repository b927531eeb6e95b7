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
from apr_core.technique import EvaluateTechnique


class Perplexity(EvaluateTechnique):
    name = "perplexity"
    summary = "exp(mean token cross-entropy) over non-overlapping windows of a corpus"
    paper = "Sun et al. 2023 (Wanda) / Frantar & Alistarh 2023 (SparseGPT) evaluation protocol"
    params = (
        Param("dataset", "str", "stdlib-code",
              "Corpus: stdlib-code (alias code), rust-code, typescript-code (see apr data sources), "
              "python-docs (alias prose), wikitext-2, or a file (raw text, jsonl or parquet with a text field)"),
        Param("seq_len", "int", None, "Window length in tokens (default: the model's context length)", min=2),
        Param("max_tokens", "int", None, "Evaluate only the first N tokens of the corpus", min=2),
        Param("batch_size", "int", 1, "Windows per forward pass", min=1),
        Param("text_field", "str", "text", "Field holding the text in jsonl/parquet files"),
    )

    def contract_params(self, workdir, inputs):
        sample = workdir / "ppl-sample.txt"
        sample.write_text("def add(a, b):\n    return a + b\n\n" * 20)
        return {"dataset": str(sample), "seq_len": "32"}

    def evaluate(self, model, params: dict[str, Any], context) -> dict[str, Any]:
        from apr_core.corpora import load_corpus
        from apr_core.runtime.tokens import consecutive_windows, encode
        from apr_core.torch_bridge import load_tokenizer, to_transformers

        corpus = load_corpus(params["dataset"], params["text_field"])
        ids = encode(load_tokenizer(model), corpus.text)
        if params["max_tokens"]:
            ids = ids[: params["max_tokens"]]
        if len(ids) < 2:
            raise AprError(f"{corpus.name}: fewer than 2 tokens to evaluate")
        tokens = consecutive_windows(ids, params["seq_len"] or int(model.text_config().get("max_position_embeddings")
                                                                   or 2048))
        n_windows, seq_len = tokens.shape
        dtype = context.compute_dtype(model=model)
        module = to_transformers(model, dtype=dtype, device=context.device)
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
            "dtype": dtype,
            "device": context.device,
            "seconds": round(seconds, 3),
            "tokens_per_second": round(n_windows * seq_len / seconds, 1) if seconds > 0 else None,
            "summary": f"perplexity {ppl:.4f} on {corpus.name} ({count} predicted tokens, "
                       f"{n_windows} windows of {seq_len})",
        }


def window_nll(module, tokens, batch_size: int, context) -> tuple[float, int]:
    """Summed next-token negative log-likelihood (nats) over all windows, and the token count."""
    import torch

    from apr_core.runtime.loss import next_token_loss, softcap_of

    decoder = module.get_decoder()
    head = module.get_output_embeddings()
    total, count, workspace = 0.0, 0, {}
    batches = range(0, tokens.shape[0], batch_size)
    with torch.inference_mode():
        for b in context.progress(batches, desc="perplexity", total=len(batches)):
            batch = tokens[b: b + batch_size].to(context.device)
            hidden = decoder(input_ids=batch).last_hidden_state
            nll, n = next_token_loss(hidden, head, batch, softcap=softcap_of(module), workspace=workspace)
            total += float(nll)
            count += n
    return total, count
