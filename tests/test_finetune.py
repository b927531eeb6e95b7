"""apr finetune on tiny models: data layouts and masks, LoRA/QLoRA/full, peft round trips, merging,
loss normalisation, kill-and-resume, many processes, the memory plan and the errors."""

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from apr_core import pipeline
from apr_core.errors import AprError
from apr_core.technique import RunContext
from apr_core.testing import tiny_model, write_tiny
from helpers import one_error_line, run_apr, run_apr_signalled_at_checkpoint


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("ft")
    write_tiny(d / "base.apr", "llama", seed=0)
    write_tiny(d / "other.apr", "llama", seed=1, hidden_size=32, intermediate_size=64)
    rows = [{"instruction": f"Write a function that adds {i} to x.", "output": f"def f(x):\n    return x + {i}\n"}
            for i in range(48)]
    (d / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def finetune(work, out, fmt=None, **raw):
    method = raw.pop("method", "lora")
    raw.setdefault("data", str(work / "data.jsonl"))
    raw.setdefault("batch_size", 4)
    if method != "full":
        raw.setdefault("dropout", 0.0)
    return pipeline.run("finetune", method, [str(work / "base.apr")], raw, str(out), fmt,
                        context=RunContext(quiet=True, seed=3))


def adapter_tensors(directory):
    from safetensors.torch import load_file

    return load_file(str(Path(directory) / "adapter_model.safetensors"))


# --------------------------------------------------------------------------- data

def test_layouts_masks_and_bad_lines(tmp_path):
    from apr_core.runtime import examples as ex
    from apr_core.torch_bridge import load_tokenizer

    tok = load_tokenizer(tiny_model("llama"))
    rows = [{"instruction": "Add.", "input": "1 and 2", "output": "3"},
            {"prompt": "def f():", "completion": " return 1"},
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                          {"role": "user", "content": "again"}, {"role": "assistant", "content": "bye"}]},
            {"text": "print(1)"}]
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    records = ex.read_records(path)
    assert [r.layout for r in records] == ["alpaca", "prompt", "messages", "text"]
    assert records[0].prompt == "Add.\n\n1 and 2"
    chat = ex.Formatter(tok, chat=True)
    a = chat.example(records[0])
    answer = tok.decode([i for i, m in zip(a.ids, a.mask) if m])
    assert answer == "3<|im_end|>\n" or answer.startswith("3<|im_end|>")
    assert a.ids[-1] == tok.eos_token_id and not any(a.mask[: a.mask.index(True)])
    m = chat.example(records[2])
    trained = tok.decode([i for i, k in zip(m.ids, m.mask) if k])
    assert "hello" in trained and "bye" in trained and "again" not in trained and "hi" not in trained
    plain = ex.Formatter(tok, chat=False)
    b = plain.example(records[1])
    assert tok.decode([i for i, k in zip(b.ids, b.mask) if k]).startswith(" return 1")
    t = plain.example(records[3])
    assert all(t.mask) and t.ids[-1] == tok.eos_token_id
    every = ex.Formatter(tok, chat=True, train_on_prompt=True).example(records[0])
    assert all(every.mask)
    for bad, match in (('{"instruction": "x", "output": "y"}\n{"instruction": 3, "output": "y"}\n',
                        r"bad.jsonl:2: field 'instruction'"),
                       ('{"foo": 1}\n', "bad.jsonl:1: no known layout"),
                       ('not json\n', "bad.jsonl:1: not valid JSON"),
                       ('{"messages": [{"role": "user", "content": "x"}]}\n', "no assistant message"),
                       ("\n\n", "empty")):
        (tmp_path / "bad.jsonl").write_text(bad)
        with pytest.raises(AprError, match=match):
            ex.read_records(tmp_path / "bad.jsonl")
    (tmp_path / "latin.jsonl").write_bytes(b'{"text": "caf\xe9"}\n')
    with pytest.raises(AprError, match="not UTF-8"):
        ex.read_records(tmp_path / "latin.jsonl")


def test_packing_and_split():
    from apr_core.runtime import examples as ex

    items = [ex.Example([1, 2, 3], [False, True, True]), ex.Example([4, 5], [False, True]),
             ex.Example([6, 7, 8, 9], [True] * 4)]
    packed = ex.pack(items, 6)
    assert [p.ids for p in packed] == [[1, 2, 3, 4, 5], [6, 7, 8, 9]]
    assert packed[0].mask == [False, True, True, False, True]  # no target crosses two examples
    train, held = ex.split(list(items) * 4, 0.25, seed=1)
    assert len(held) == 3 and len(train) == 9
    assert ex.split(list(items) * 4, 0.25, seed=1)[1] == held


# --------------------------------------------------------------------------- methods and outputs

def test_lora_adapter_loads_in_peft_with_identical_logits(work, tmp_path):
    from peft import PeftModel

    from apr_core.torch_bridge import to_transformers

    summary = finetune(work, tmp_path / "lora/", max_steps=4, learning_rate=5e-3)
    assert summary["format"] == "peft" and (tmp_path / "lora" / "adapter_config.json").is_file()
    report = summary["report"]
    assert report["steps"] == 4 and report["method"] == "lora"
    assert (tmp_path / "lora.run" / "loss.png").is_file() and (tmp_path / "lora" / "train_log.json").is_file()
    merged = pipeline.run("finetune", None, [str(work / "base.apr")], {"adapter": str(tmp_path / "lora"),
                                                                       "merge": True},
                          str(tmp_path / "merged.apr"), context=RunContext(quiet=True))
    assert merged["report"]["merged_modules"] == 4
    peft_model = PeftModel.from_pretrained(to_transformers(pipeline.load(str(work / "base.apr"))),
                                           str(tmp_path / "lora")).eval()
    ours = to_transformers(pipeline.load(str(tmp_path / "merged.apr")))
    ids = torch.randint(0, 300, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        theirs, mine = peft_model(ids).logits, ours(ids).logits
        base = to_transformers(pipeline.load(str(work / "base.apr")))(ids).logits
    assert (theirs - base).abs().max() > 1e-3  # the adapter changed something
    torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)
    record = pipeline.load(str(tmp_path / "merged.apr")).provenance[-1]
    assert record["operation"] == "finetune" and record["params"]["adapter"] == str(tmp_path / "lora")


def test_an_adapter_trained_by_peft_merges_in_apr(work, tmp_path):
    from peft import LoraConfig, get_peft_model

    from apr_core.torch_bridge import to_transformers

    lm = to_transformers(pipeline.load(str(work / "base.apr")))
    pm = get_peft_model(lm, LoraConfig(r=4, lora_alpha=12, target_modules=["k_proj", "down_proj"],
                                       use_rslora=True, task_type="CAUSAL_LM"))
    torch.manual_seed(1)
    for name, p in pm.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.05)  # peft starts B at zero; give the adapter an effect
    pm.save_pretrained(str(tmp_path / "theirs"))
    run_apr("finetune", str(work / "base.apr"), "--adapter", str(tmp_path / "theirs"), "--merge",
            "-o", str(tmp_path / "m.apr"), check=True)
    ours = to_transformers(pipeline.load(str(tmp_path / "m.apr")))
    ids = torch.randint(0, 300, (1, 30), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, pm.eval()(ids).logits, rtol=1e-5, atol=1e-5)


def test_qlora_trains_on_nf4_and_merges_into_the_dequantized_base(work, tmp_path):
    from peft import PeftModel

    from apr_core.torch_bridge import to_transformers
    from apr_finetune.modules import nf4_model

    summary = finetune(work, tmp_path / "q/", method="qlora", rank=8, max_steps=3, learning_rate=5e-3)
    training = json.loads((tmp_path / "q" / "apr_training.json").read_text())
    assert training["base_quantization"] == {"quant_type": "nf4", "blocksize": 64, "double_quant": True}
    assert summary["report"]["method"] == "qlora"
    pipeline.run("finetune", None, [str(work / "base.apr")], {"adapter": str(tmp_path / "q"), "merge": True},
                 str(tmp_path / "qm.apr"), context=RunContext(quiet=True))
    base = pipeline.load(str(work / "base.apr"))
    nf4 = nf4_model(base, "cpu", "float32", True)
    assert type(nf4.model.layers[0].mlp.down_proj).__name__ == "Linear4bit"
    reference = PeftModel.from_pretrained(nf4, str(tmp_path / "q"))  # train mode: bitsandbytes' exact path
    merged = to_transformers(pipeline.load(str(tmp_path / "qm.apr")))
    ids = torch.randint(0, 300, (2, 20), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, reference(ids).logits, rtol=1e-4, atol=1e-4)
        plain = to_transformers(base)(ids).logits
    assert (plain - reference(ids).logits).abs().max() > 1e-3  # NF4 differs from the base: merged follows NF4
    assert pipeline.load(str(tmp_path / "qm.apr")).spec("model.layers.0.mlp.down_proj.weight").dtype == "F32"


def test_full_finetune_writes_a_model_and_lowers_the_loss(work, tmp_path):
    summary = finetune(work, tmp_path / "full.apr", method="full", max_steps=8, learning_rate=3e-3, eval_split=0.1)
    report = summary["report"]
    assert report["eval_loss"] < report["eval_loss_before"]
    out, base = pipeline.load(str(tmp_path / "full.apr")), pipeline.load(str(work / "base.apr"))
    assert out.names() == base.names() and out.tokenizer == base.tokenizer
    assert not torch.equal(out.tensor("model.layers.0.mlp.up_proj.weight"), base.tensor("model.layers.0.mlp.up_proj.weight"))
    assert out.provenance[-1]["result"]["steps"] == 8
    with pytest.raises(AprError, match="whole model"):
        finetune(work, tmp_path / "full-dir/", "peft", method="full", max_steps=1)


def test_cpu_steps_trim_the_heap_for_adapters_only(work, tmp_path, monkeypatch):
    """LoRA steps start with the heap trim; full fine-tuning's do not (`heap_trim_pays`)."""
    from apr_core.runtime import malloc

    calls = []
    monkeypatch.setattr(malloc, "trim_slack", lambda *a, **k: calls.append(1) or False)
    finetune(work, tmp_path / "trim-lora/", max_steps=3, eval_split=0)
    assert len(calls) == 3
    calls.clear()
    finetune(work, tmp_path / "trim-full.apr", method="full", max_steps=3, eval_split=0)
    assert calls == []


def test_cpu_training_chunks_the_head_as_the_plan_counts(work, tmp_path, monkeypatch):
    """A CPU step runs the fused LM head + cross-entropy `training_chunk("cpu")` tokens at a time,
    and the plan's logits term (the one fp32 chunk buffer of `linear_ce`) counts that chunk, not
    the evaluation one."""
    from apr_core.runtime import linear_ce, loss
    from apr_finetune.memory import plan_method

    seen, real = [], linear_ce.linear_cross_entropy

    def spy(hidden, head, ids, mask, chunk):
        seen.append(chunk)
        return real(hidden, head, ids, mask, chunk)

    monkeypatch.setattr(linear_ce, "linear_cross_entropy", spy)
    finetune(work, tmp_path / "chunks/", max_steps=1, eval_split=0)
    assert set(seen) == {loss.training_chunk("cpu")} and loss.training_chunk("cpu") < loss.CHUNK
    model = pipeline.load(str(work / "base.apr"))
    plan = plan_method(model, "lora", {"rank": 4, "batch_size": 8, "max_seq_len": 64}, RunContext())
    assert plan["parts"]["logits"] == 4 * loss.training_chunk("cpu") * model.text_config()["vocab_size"]


def test_an_fsdp_configuration_is_refused_before_anything_is_written(work, tmp_path):
    """accelerate's FSDP switch gets one error line and exit 2 (on a CPU accelerate would
    silently train with DDP; on GPUs rank 0 would write sharded parameters), and nothing is written."""
    import os
    import subprocess
    import sys

    from helpers import one_error_line

    out = tmp_path / "fsdp.apr"
    proc = subprocess.run([sys.executable, "-m", "apr_core.cli", "finetune", str(work / "base.apr"), "--method", "full",
                           "--data", str(work / "data.jsonl"), "--max-steps", "1", "-o", str(out)],
                          capture_output=True, text=True, env=dict(os.environ, ACCELERATE_USE_FSDP="true"))
    assert "FSDP is not supported" in one_error_line(proc)
    assert list(tmp_path.iterdir()) == []


def test_adamw_takes_the_fused_kernel_where_it_can():
    from apr_core.runtime.trainer import fusable, make_optimizer

    cpu = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(3))]
    assert make_optimizer("adamw", cpu, 1e-3, 0.0, "cpu").defaults["fused"] is True
    meta = [torch.nn.Parameter(torch.randn(2, device="meta"))]
    assert not fusable(meta) and not fusable(cpu + meta)
    assert not make_optimizer("adamw", meta, 1e-3, 0.0, "cpu").defaults["fused"]


def test_accumulation_normalises_by_the_whole_batch(work, tmp_path):
    """Micro-batches of different lengths: 1x4, 2x2 and 4x1 give the same update (the per-token
    loss of the whole global batch), which per-micro-batch means would not."""
    outs = []
    for batch, accum in ((4, 1), (2, 2), (1, 4)):
        finetune(work, tmp_path / f"acc{batch}/", max_steps=2, batch_size=batch, grad_accum=accum, eval_split=0,
                 learning_rate=1e-2)
        outs.append(adapter_tensors(tmp_path / f"acc{batch}"))
    for other in outs[1:]:
        for k in outs[0]:
            torch.testing.assert_close(other[k], outs[0][k], rtol=1e-3, atol=5e-5)


# --------------------------------------------------------------------------- runs

def test_rerun_of_a_finished_run_does_nothing(work, tmp_path):
    finetune(work, tmp_path / "a/", max_steps=2)
    again = finetune(work, tmp_path / "a/", max_steps=2)
    assert again["up_to_date"] is True
    changed = finetune(work, tmp_path / "b/", max_steps=2, rank=4)
    assert "up_to_date" not in changed


def _cli(work, out, *extra):
    return [sys.executable, "-m", "apr_core.cli", "finetune", str(work / "base.apr"), "--method", "lora",
            "--data", str(work / "data.jsonl"), "--dropout", "0.1", "--batch-size", "2", "--max-steps", "24",
            "--save-steps", "4", "--seed", "5", "-q", "-o", str(out), *extra]


@pytest.mark.parametrize("how", ["kill", "term"])
def test_killed_run_resumes_to_the_same_adapter(work, tmp_path, how):
    subprocess.run(_cli(work, tmp_path / "one/"), check=True, capture_output=True)
    sig = signal.SIGKILL if how == "kill" else signal.SIGTERM
    proc = run_apr_signalled_at_checkpoint(_cli(work, tmp_path / "two/")[3:], 8, sig)
    assert proc.returncode == (143 if how == "term" else -signal.SIGKILL), proc.stderr
    if how == "term":
        assert "--resume" in proc.stderr
    assert not (tmp_path / "two").exists()
    refused = run_apr(*_cli(work, tmp_path / "two/")[3:])
    assert "--resume" in one_error_line(refused)
    resumed = json.loads(run_apr(*_cli(work, tmp_path / "two/", "--resume", "--json")[3:], check=True).stdout)
    assert resumed["report"]["resumed_from_step"] >= 8
    a, b = adapter_tensors(tmp_path / "one"), adapter_tensors(tmp_path / "two")
    assert all(torch.equal(a[k], b[k]) for k in a)
    log_one = json.loads((tmp_path / "one" / "train_log.json").read_text())
    log_two = json.loads((tmp_path / "two" / "train_log.json").read_text())
    assert [r.get("loss") for r in log_one] == [r.get("loss") for r in log_two]


def test_two_gloo_processes_match_one_with_twice_the_accumulation(work, tmp_path):
    common = ["--dropout", "0", "--max-steps", "3", "--batch-size", "2", "--eval-split", "0", "-q"]
    one = run_apr("finetune", str(work / "base.apr"), "--method", "lora", "--data", str(work / "data.jsonl"),
                  "--grad-accum", "2", "-o", str(tmp_path / "one/"), *common, check=True)
    two = run_apr("finetune", str(work / "base.apr"), "--method", "lora", "--data", str(work / "data.jsonl"),
                  "--grad-accum", "1", "--nproc", "2", "-o", str(tmp_path / "two/"), *common,
                  env={"OMP_NUM_THREADS": "1"}, check=True)
    assert one.returncode == two.returncode == 0
    a, b = adapter_tensors(tmp_path / "one"), adapter_tensors(tmp_path / "two")
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-7)
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


# --------------------------------------------------------------------------- plan and errors

def test_plan_and_auto(work):
    plan = json.loads(run_apr("finetune", str(work / "base.apr"), "--method", "auto", "--vram", "24", "--plan",
                              "--json", check=True).stdout)
    assert plan["technique"] == "finetune full" and "fits 90% of --vram 24" in plan["choice"]
    parts = {row["part"] for row in plan["memory"]}
    assert parts >= {"weights", "adapter", "gradients", "optimizer", "activations", "logits", "runtime"}
    from apr_finetune.memory import choose, plan_method

    model = pipeline.load(str(work / "base.apr"))
    ctx = RunContext()
    small = {"rank": 16, "batch_size": 1, "max_seq_len": 32}  # few activations: weights and states decide
    lora = plan_method(model, "lora", small, ctx)
    full = plan_method(model, "full", small, ctx)
    assert full["parts"]["optimizer"] == 8 * model.param_count and lora["trainable_params"] < full["trainable_params"]
    assert full["peak_bytes"] > lora["peak_bytes"]
    between = (full["peak_bytes"] + lora["peak_bytes"]) / 2 / 0.9e9
    method, why = choose(model, {**small, "vram": between}, ctx)
    assert (method, why["rank"]) == ("lora", 16) and "tried: full" in why["why"]


def test_user_mistakes_are_one_line_and_write_nothing(work, tmp_path):
    base, data = str(work / "base.apr"), str(work / "data.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"instruction": "x", "output": "y"}\n{"prompt": 1}\n')
    cases = [
        (["--method", "lora", "--data", str(tmp_path / "bad.jsonl")], "bad.jsonl:2"),
        (["--method", "lora", "--data", data, "--rank", "0"], "--rank must be in"),
        (["--method", "lora"], "needs --data"),
        (["--method", "lora", "--data", data, "--vram", "0.000001"], "--vram"),
        (["--method", "auto", "--data", data, "--vram", "0.000001"], "no method fits"),
        (["--merge"], "--merge needs --adapter"),
        (["--adapter", str(tmp_path), "--merge"], "no adapter_config.json"),
        (["--method", "lora", "--data", data, "--target-modules", "nope_proj"], "--target-modules"),
    ]
    for args, message in cases:
        out = tmp_path / "out/"
        assert message in one_error_line(run_apr("finetune", base, *args, "-o", str(out))), args
        assert not out.exists() and not (tmp_path / "out.run").exists()
    finetune(work, tmp_path / "mine/", max_steps=1)
    other = run_apr("finetune", str(work / "other.apr"), "--adapter", str(tmp_path / "mine"), "--merge",
                    "-o", str(tmp_path / "x.apr"))
    assert "another base" in one_error_line(other) and not (tmp_path / "x.apr").exists()
