"""apr distill on tiny models: the chunked loss against a direct computation, the teacher cache,
vocabularies (padded and mismatched), the curriculum, the three strategies end to end, depth-pruned
students, --plan, up-to-date and kill-and-resume."""

import json
import math
import signal
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from apr_core import pipeline
from apr_core.errors import AprError
from apr_core.formats.apr import read_apr, write_apr
from apr_core.runtime.trainer import collate
from apr_core.technique import RunContext
from apr_core.testing import tiny_model, tiny_tokenizer_files, write_tiny
from apr_core.torch_bridge import to_transformers
from helpers import one_error_line, run_apr, run_apr_signalled_at_checkpoint


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("distill")
    write_tiny(d / "teacher.apr", "llama", seed=0)
    write_tiny(d / "teacher2.apr", "llama", seed=2)
    write_tiny(d / "student.apr", "llama", seed=1, hidden_size=32, intermediate_size=64)
    rows = [{"prompt": f"Write f{i}.", "completion": "def f(x):\n" + "    if x:\n" * (i % 3) +
             f"    return (x + {i})\n"} for i in range(24)]
    (d / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def distill(work, out, strategy="standard", teachers=("teacher.apr",), **raw):
    raw.setdefault("data", str(work / "data.jsonl"))
    raw.setdefault("student", str(work / "student.apr"))
    raw.setdefault("batch_size", 4)
    raw.setdefault("max_seq_len", 48)
    return pipeline.run("distill", strategy, [str(work / t) for t in teachers], raw, str(out),
                        context=RunContext(quiet=True, seed=3))


# --------------------------------------------------------------------------- the loss

def _direct(s_logits, t_logits, labels, mask, T, alpha, kind, shared):
    """The loss on whole tensors, written from the definitions."""
    s, t = s_logits[mask], t_logits[mask][:, :shared]
    p, log_p = F.softmax(t / T, -1), F.log_softmax(t / T, -1)
    q, log_q = F.softmax(s[:, :shared] / T, -1), F.log_softmax(s[:, :shared] / T, -1)
    if kind == "kl":
        d = (p * (log_p - log_q)).sum()
    elif kind == "reverse-kl":
        d = (q * (log_q - log_p)).sum()
    else:
        m = (p + q) / 2
        d = 0.5 * (p * (log_p - m.log())).sum() + 0.5 * (q * (log_q - m.log())).sum()
    return alpha * T * T * d + (1 - alpha) * F.cross_entropy(s, labels[mask], reduction="sum")


@pytest.mark.parametrize("kind", ["kl", "reverse-kl", "jsd"])
def test_chunked_loss_equals_the_direct_computation(kind):
    from apr_core.runtime.loss import chunked_loss

    from apr_distill.loss import kd_chunk

    torch.manual_seed(0)
    B, S, d, V, shared = 3, 11, 8, 40, 36  # the teacher has 4 padding rows fewer than the student
    hidden = torch.randn(B, S, d, requires_grad=True)
    s_head, t_head = torch.nn.Linear(d, V, bias=False), torch.nn.Linear(d, shared, bias=False)
    t_hidden = torch.randn(B, S, d)
    ids = torch.randint(0, shared, (B, S))
    mask = torch.rand(B, S) > 0.3
    mask[:, 0] = False

    def per_chunk(h, target, keep, th):
        t_logp = F.log_softmax(t_head(th[keep]) / 3.0, -1)
        return kd_chunk(s_head(h[keep]), target[keep], t_logp, 3.0, 0.7, kind, shared)

    got, count = chunked_loss(hidden, ids, mask, per_chunk, chunk=6, extra=(t_hidden,))  # 2 positions a chunk
    got.backward()
    grad_chunked = hidden.grad.clone()
    hidden.grad = None
    s_logits, t_logits = s_head(hidden)[:, :-1], t_head(t_hidden)[:, :-1]
    want = _direct(s_logits, t_logits, ids[:, 1:], mask[:, 1:], 3.0, 0.7, kind, shared)
    want.backward()
    assert count == int(mask[:, 1:].sum())
    assert torch.allclose(got, want, rtol=1e-5), (float(got), float(want))
    assert torch.allclose(grad_chunked, hidden.grad, atol=1e-6)


def test_topk_buckets_lower_bound_and_exact_at_full_k():
    from apr_distill.loss import divergence, student_buckets

    torch.manual_seed(1)
    t, s = torch.randn(5, 30) * 2, torch.randn(5, 30)
    t_logp = F.log_softmax(t, -1)
    full = divergence(t_logp, F.log_softmax(s, -1), "kl")
    for k in (4, 12):
        values, ids = t_logp.topk(k, -1)
        rest = torch.logsumexp(t_logp.scatter(-1, ids, float("-inf")), -1, keepdim=True)
        coarse = divergence(torch.cat([values, rest], -1), student_buckets(s, ids, 1.0, True), "kl")
        assert 0 < coarse < full  # data processing: coarse-graining cannot increase a divergence
    values, ids = t_logp.topk(30, -1)
    assert torch.allclose(divergence(values, student_buckets(s, ids, 1.0, False), "kl"), full, rtol=1e-5)


# --------------------------------------------------------------------------- the cache

def test_packed_ids_round_trip():
    from apr_distill.cache import pack_ids, unpack_ids

    ids = torch.randint(0, 151936, (7, 64)).numpy()
    blob = pack_ids(ids, 18)
    assert len(blob) == math.ceil(7 * 64 * 18 / 8)
    assert (unpack_ids(blob, 7 * 64, 18).reshape(7, 64) == ids).all()


def _examples(work, model):
    from apr_core.runtime import examples as ex
    from apr_core.torch_bridge import load_tokenizer

    formatter = ex.Formatter(load_tokenizer(model))
    return ex.tokenize(ex.read_records(work / "data.jsonl"), formatter, 48)[0][:6]


@pytest.mark.parametrize("k", [320, 16])
def test_cache_gives_the_live_teachers_loss_when_k_covers_the_vocabulary(work, tmp_path, k):
    from apr_distill import cache as C
    from apr_distill.teachers import CachedTeacher, DistillLoss, LiveTeachers

    teacher, student = read_apr(work / "teacher.apr"), read_apr(work / "student.apr")
    examples = _examples(work, teacher)
    live = LiveTeachers([to_transformers(teacher)], 320, 2.0)
    (tmp_path / "c").mkdir()
    C.write(tmp_path / "c", "key", C.scan(live, examples, 4, "cpu", k), 320, k, examples)
    cache = C.TeacherCache(tmp_path / "c")
    lm = to_transformers(student).train()
    ids, attn, mask = collate(examples, "cpu")
    losses = {}
    for name, source in (("live", live), ("cache", CachedTeacher(cache))):
        with torch.no_grad():
            losses[name] = float(DistillLoss(lm, source, 320, 2.0, 0.7, "kl")(ids, attn, mask)[0])
    positions = sum(e.targets for e in examples)
    assert cache.index["positions"] == positions
    if k == 320:  # the whole vocabulary: the live loss, to fp16 rounding of the log-probabilities
        assert losses["cache"] == pytest.approx(losses["live"], rel=2e-3)
        assert cache.index["bytes_per_token"] == pytest.approx(320 * (9 / 8 + 2), abs=1)
    else:  # top 16 + the rest: a lower KD term, 16 ids x (9 bits + fp16) + the rest column per token
        assert losses["cache"] < losses["live"]
        assert cache.index["bytes_per_token"] == pytest.approx(16 * 9 / 8 + 17 * 2, abs=1)


def test_cli_cache_is_built_once_reused_and_refused_for_other_settings(work, tmp_path):
    first = distill(work, tmp_path / "a.apr", cache_teacher=str(tmp_path / "cache"), max_steps=2, cache_top_k=8)
    info = first["report"]["teacher_cache"]
    assert info["built"] is True and info["k"] == 8 and info["bytes_per_token"] == pytest.approx(8 * 9 / 8 + 18, abs=1)
    again = distill(work, tmp_path / "b.apr", cache_teacher=str(tmp_path / "cache"), max_steps=3, cache_top_k=8)
    assert again["report"]["teacher_cache"]["built"] is False
    with pytest.raises(AprError, match="holds a cache of other"):
        distill(work, tmp_path / "c.apr", cache_teacher=str(tmp_path / "cache"), max_steps=2, cache_top_k=8,
                temperature=5.0)
    assert not (tmp_path / "c.apr").exists()


# --------------------------------------------------------------------------- vocabularies

def test_padded_vocabularies_are_truncated_to_the_shared_ids(work, tmp_path):
    from apr_distill.vocab import shared_vocabulary

    padded = tiny_model("llama", seed=4, vocab_size=384)  # same tokenizer, 64 padding rows
    write_apr(padded, tmp_path / "padded.apr")
    n, note = shared_vocabulary([read_apr(tmp_path / "padded.apr")], read_apr(work / "student.apr"))
    assert n == 320 and "padded" in note["vocabulary_note"]
    out = distill(work, tmp_path / "d.apr", teachers=(str(tmp_path / "padded.apr"),), max_steps=2)
    assert out["report"]["shared_ids"] == 320
    assert read_apr(tmp_path / "d.apr").spec("lm_head.weight").shape[0] == 320  # the student's own rows


def test_different_tokenizers_are_refused_with_one_line(work, tmp_path):
    other = tiny_model("llama", seed=5)
    other.tokenizer = dict(tiny_tokenizer_files(vocab_size=300))
    other.config["vocab_size"] = 320
    write_apr(other, tmp_path / "other.apr")
    proc = run_apr("distill", str(work / "teacher.apr"), "--student", str(tmp_path / "other.apr"), "--data",
                   str(work / "data.jsonl"), "-o", str(tmp_path / "x.apr"))
    assert "different tokenizers" in one_error_line(proc)
    assert not (tmp_path / "x.apr").exists()


# --------------------------------------------------------------------------- curriculum

def test_nesting_depth_and_ranks():
    from apr_distill.curriculum import nesting_depth, ranks

    assert nesting_depth("x = 1") == 0
    assert nesting_depth("def f(x):\n    if x:\n        return [(x)]\n") == 2 + 2
    assert ranks([3.0, 1.0, 1.0, 2.0]) == [1.0, 1 / 6, 1 / 6, 2 / 3]


def test_curriculum_pool_grows_from_the_easiest(work, tmp_path):
    from apr_core.runtime.trainer import TrainSettings

    from apr_distill.curriculum import CurriculumTrainer

    train = list(range(40))  # stand-ins: the trainer only indexes them
    order = list(reversed(range(40)))  # example 39 is the easiest
    trainer = CurriculumTrainer(object(), [type("E", (), {"targets": 1})() for _ in train], [],
                                TrainSettings(epochs=2, batch_size=4, seed=1), RunContext(), tmp_path, None, None, "",
                                order=order, stages=4, start=0.25)
    trainer.train = train
    per_epoch, total = trainer.plan_steps(1)
    assert total == 20
    seen = [trainer.global_batch(step, per_epoch, 1) for step in range(total)]
    assert set(x for b in seen[:5] for x in b) <= set(order[:10])  # stage 1: the easiest 25%
    assert set(x for b in seen[15:] for x in b) - set(order[:34])  # stage 4: the hardest come in
    assert all(len(b) == 4 for b in seen)
    assert [r["pool"] for r in trainer.schedule()] == [10, 25, 34, 40]
    assert seen == [trainer.global_batch(step, per_epoch, 1) for step in range(total)]  # a function of the step


# --------------------------------------------------------------------------- end to end

def test_standard_kd_lowers_the_held_out_loss_and_records_provenance(work, tmp_path):
    out = distill(work, tmp_path / "s.apr", epochs=3, temperature=3.0, alpha=0.7, eval_split=0.2)
    report = out["report"]
    assert report["eval_loss"] < report["eval_loss_before"]
    model = read_apr(tmp_path / "s.apr")
    last = model.provenance[-1]
    assert last["operation"] == "distill" and last["technique"] == "standard"
    assert len(last["inputs"]) == 2  # teacher and student, with their hashes
    assert model.spec("model.layers.0.mlp.up_proj.weight").shape == (64, 32)  # the student's shapes
    assert distill(work, tmp_path / "s.apr", epochs=3, temperature=3.0, alpha=0.7, eval_split=0.2)["up_to_date"]


def test_progressive_and_ensemble_run_and_differ_from_standard(work, tmp_path):
    prog = distill(work, tmp_path / "p.apr", "progressive", max_steps=8, stages=4)
    assert [r["steps"] for r in prog["report"]["curriculum"]] == [2, 2, 2, 2]
    ens = distill(work, tmp_path / "e.apr", "ensemble", teachers=("teacher.apr", "teacher2.apr"), max_steps=4)
    assert ens["report"]["teachers"] == 2
    weighted = distill(work, tmp_path / "w.apr", "ensemble", teacher=str(work / "teacher2.apr"),
                       teacher_weights="1,0", max_steps=4)
    alone = distill(work, tmp_path / "a.apr", "standard", max_steps=4)
    # weight 0 on the second teacher: exactly the first teacher's standard KD
    assert weighted["report"]["train_loss"] == pytest.approx(alone["report"]["train_loss"], rel=1e-5)
    assert ens["report"]["train_loss"] != pytest.approx(alone["report"]["train_loss"], rel=1e-5)
    with pytest.raises(AprError, match="--teacher-weights has 1 values for 2"):
        distill(work, tmp_path / "x.apr", "ensemble", teacher=str(work / "teacher2.apr"), teacher_weights="1")
    with pytest.raises(AprError, match="takes 1 model"):
        distill(work, tmp_path / "x.apr", "standard", teachers=("teacher.apr", "teacher2.apr"))


def test_student_from_depth_pruning_and_lora(work, tmp_path):
    out = distill(work, tmp_path / "pr.apr", student=None, student_layers=1, max_steps=2)
    assert "1 of 2 layers" in out["report"]["student"]
    assert read_apr(tmp_path / "pr.apr").config["num_hidden_layers"] == 1
    lora = distill(work, tmp_path / "l.apr", method="lora", max_steps=2, rank=4)
    assert lora["report"]["method"] == "lora"
    raw = {"data": str(work / "data.jsonl"), "student": str(work / "student.apr"), "method": "lora", "rank": 4,
           "max_steps": 2, "max_seq_len": 48}
    adapter = pipeline.run("distill", "standard", [str(work / "teacher.apr")], raw, str(tmp_path / "adapter"),
                           "peft", context=RunContext(quiet=True))
    assert (tmp_path / "adapter" / "adapter_config.json").is_file() and adapter["format"] == "peft"


def test_plan_counts_teacher_and_student(work):
    plan = pipeline.plan("distill", "standard", [str(work / "teacher.apr")],
                         {"student": str(work / "student.apr"), "data": str(work / "data.jsonl")})
    parts = {r["part"]: r["bytes"] for r in plan["memory"]}
    assert parts["teacher_weights"] == 4 * read_apr(work / "teacher.apr").param_count
    assert parts["weights"] == 4 * read_apr(work / "student.apr").param_count
    cached = pipeline.plan("distill", "standard", [str(work / "teacher.apr")],
                           {"student_layers": "1", "data": str(work / "data.jsonl"), "cache_teacher": "/nonexistent"})
    assert "teacher_weights" not in {r["part"] for r in cached["memory"]} and cached["student_layers"] == 1
    assert cached["cache_bytes_per_token"] == pytest.approx(64 * (9 / 8 + 2) + 2)


def test_user_mistakes_are_one_line(work, tmp_path):
    base = ["distill", str(work / "teacher.apr"), "--data", str(work / "data.jsonl"), "-o", str(tmp_path / "o.apr")]
    assert "--student PATH or --student-layers" in one_error_line(run_apr(*base))
    assert "only 2 decoder layers" in one_error_line(run_apr(*base, "--student-layers", "2"))
    assert "--loss" in one_error_line(run_apr(*base, "--student-layers", "1", "--loss", "mse"))
    assert not (tmp_path / "o.apr").exists()


def _cli(work, out, *extra):
    return [sys.executable, "-m", "apr_core.cli", "distill", str(work / "teacher.apr"), "--student",
            str(work / "student.apr"), "--strategy", "progressive", "--data", str(work / "data.jsonl"),
            "--batch-size", "2", "--max-steps", "24", "--save-steps", "4", "--max-seq-len", "48", "--seed", "5",
            "-q", "-o", str(out), *extra]


def test_terminated_progressive_run_resumes_to_the_same_student(work, tmp_path):
    subprocess.run(_cli(work, tmp_path / "one.apr"), check=True, capture_output=True)
    proc = run_apr_signalled_at_checkpoint(_cli(work, tmp_path / "two.apr")[3:], 8, signal.SIGTERM)
    assert proc.returncode == 143 and not (tmp_path / "two.apr").exists(), proc.stderr
    resumed = json.loads(run_apr(*_cli(work, tmp_path / "two.apr", "--resume", "--json")[3:], check=True).stdout)
    assert resumed["report"]["resumed_from_step"] >= 8
    a, b = read_apr(tmp_path / "one.apr"), read_apr(tmp_path / "two.apr")
    assert all(torch.equal(a.tensor(n), b.tensor(n)) for n in a.names())


# --------------------------------------------------------------------------- apr eval --task classify

def test_classify_is_teacher_forced_accuracy_on_the_reference(work, tmp_path):
    from apr_core.torch_bridge import load_tokenizer

    rows = [{"task_id": "he", "prompt": "def f(x):\n", "canonical_solution": "    return x + 1\n"},
            {"task_id": "mbpp", "text": "Add one.", "code": "def g(x):\n    return x + 1", "test_list": ["assert g(1) == 2"]},
            {"task_id": "plain", "prompt": "def h(x):\n", "solution": "    return x\n"}]
    data = tmp_path / "problems.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = run_apr("eval", str(work / "teacher.apr"), "--task", "classify", "--data", str(data), "--json", check=True)
    result = json.loads(proc.stdout)
    assert [r["task_id"] for r in result["results"]] == ["he", "mbpp", "plain"]
    # the first problem by hand: full logits, argmax against the solution tokens
    model = read_apr(work / "teacher.apr")
    tok = load_tokenizer(model)
    p, s = tok("def f(x):\n")["input_ids"], tok("    return x + 1\n", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = to_transformers(model)(torch.tensor([p + s])).logits[0]
    pred = logits[len(p) - 1:-1]
    target = torch.tensor(s)
    first = result["results"][0]
    assert first["tokens"] == len(s)
    assert first["accuracy"] == pytest.approx(float((pred.argmax(-1) == target).float().mean()), abs=1e-6)
    assert first["cross_entropy"] == pytest.approx(float(F.cross_entropy(pred, target)), rel=1e-4)
    assert result["value"] == pytest.approx(sum(r["accuracy"] for r in result["results"]) / 3, abs=1e-5)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"task_id": "x", "question": "?"}\n')
    assert "expected prompt + canonical_solution" in one_error_line(
        run_apr("eval", str(work / "teacher.apr"), "--task", "classify", "--data", str(bad)))


def test_a_quantized_teacher_distils(work, tmp_path):
    teacher = pipeline.transform("quantize", "int8", [read_apr(work / "teacher.apr")], {})
    write_apr(teacher, tmp_path / "q.apr")
    plan = pipeline.plan("distill", "standard", [str(tmp_path / "q.apr")],
                         {"student": str(work / "student.apr"), "data": str(work / "data.jsonl")})
    stored = read_apr(tmp_path / "q.apr").nbytes
    assert {r["part"]: r["bytes"] for r in plan["memory"]}["teacher_weights"] == stored
    out = distill(work, tmp_path / "s.apr", teachers=(str(tmp_path / "q.apr"),), max_steps=2)
    assert out["report"]["steps"] == 2 and math.isfinite(out["report"]["train_loss"])


def test_teacher_option_repeats(work, tmp_path):
    proc = run_apr("distill", str(work / "teacher.apr"), "--teacher", str(work / "teacher2.apr"), "--teacher",
                   str(work / "teacher.apr"), "--student", str(work / "student.apr"), "--strategy", "ensemble",
                   "--data", str(work / "data.jsonl"), "--max-steps", "1", "--max-seq-len", "48", "-q", "--json",
                   "-o", str(tmp_path / "r.apr"), check=True)
    assert json.loads(proc.stdout)["report"]["teachers"] == 3
