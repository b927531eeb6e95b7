"""CPU threads and precision chosen by apr: the rules, their sources, and that they reach torch."""

import json
import os
import subprocess
import sys

import pytest

from apr_core import pipeline
from apr_core.errors import AprError
from apr_core.runtime import device, threads


def test_auto_gives_torch_a_thread_per_usable_core():
    assert threads.auto_threads() == len(os.sched_getaffinity(0))
    assert threads.auto_threads(cores=0) == 1


def test_sources_in_order_of_precedence(monkeypatch):
    monkeypatch.setattr(threads, "auto_threads", lambda: 7)
    assert threads.choose("3", {"APR_THREADS": "5", "OMP_NUM_THREADS": "4"}) == (3, "--threads")
    assert threads.choose(None, {"APR_THREADS": "5", "OMP_NUM_THREADS": "4"}) == (5, "APR_THREADS")
    assert threads.choose(None, {"OMP_NUM_THREADS": "4"}) == (4, "OMP_NUM_THREADS")
    assert threads.choose("auto", {"APR_THREADS": "5"}) == (7, "auto")
    assert threads.choose(None, {"APR_THREADS": "auto", "OMP_NUM_THREADS": "4"}) == (7, "auto")
    assert threads.choose(None, {}) == (7, "auto")
    # a count an apr parent chose by itself is chosen again; torchrun's processes split the cores
    assert threads.choose(None, {"OMP_NUM_THREADS": "4", threads.SOURCE_ENV: "auto"}) == (7, "auto")
    monkeypatch.setattr(threads, "usable_cores", lambda: 8)
    assert threads.choose(None, {"LOCAL_WORLD_SIZE": "4"}) == (2, "auto")
    for bad in ("0", "-2", "many", "1.5"):
        with pytest.raises(AprError, match="--threads"):
            threads.choose(bad, {})


def test_wait_policy_is_passive_when_other_processes_are_busy_unless_the_user_chose():
    env = {}
    assert threads.prepare_environment(env, busy=1.2) == "passive"
    assert env == {"OMP_WAIT_POLICY": "PASSIVE", threads.POLICY_ENV: "passive"}
    env = {}
    assert threads.prepare_environment(env, busy=0.1) == "default"
    assert env == {threads.POLICY_ENV: "default"}  # libgomp's own: spin a while, then sleep
    env = {}
    assert threads.prepare_environment(env, busy=None) in ("passive", "default")  # measured here
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    assert threads.prepare_environment(env, busy=1.2) == "user" and env == {"OMP_WAIT_POLICY": "ACTIVE"}
    # a child of apr takes its parent's choice instead of sampling its siblings' start-up
    for parent in ({threads.POLICY_ENV: "default"}, {threads.POLICY_ENV: "passive", "OMP_WAIT_POLICY": "PASSIVE"}):
        env = dict(parent)
        threads.prepare_environment(env, busy=0.0 if "OMP_WAIT_POLICY" in parent else 3.0)
        assert env == parent


def test_the_load_sample_sees_a_busy_process():
    assert 0.0 <= threads.others_busy_cores(0.05) <= len(os.sched_getaffinity(0)) + 1e-9
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        import time

        time.sleep(0.3)
        assert threads.others_busy_cores(0.3) >= 0.5
    finally:
        hog.kill()
        hog.wait()


def test_resume_takes_the_checkpoints_count_only_when_apr_chose(monkeypatch):
    import torch

    before = torch.get_num_threads()
    try:
        env = {threads.SOURCE_ENV: "APR_THREADS", "OMP_NUM_THREADS": str(before)}
        threads.resume_with(before + 1, environ=env)
        assert torch.get_num_threads() == before and env["OMP_NUM_THREADS"] == str(before)
        env = {threads.SOURCE_ENV: "auto"}
        threads.resume_with(before + 1, environ=env)
        assert torch.get_num_threads() == before + 1 and env["OMP_NUM_THREADS"] == str(before + 1)
    finally:
        torch.set_num_threads(before)


PROBE = """
import os, sys, torch
from apr_core import cli
try:
    cli.main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print(code, torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS"), os.environ.get("OMP_WAIT_POLICY"))
"""


def _probe(*args, **env_over):
    env = {k: v for k, v in os.environ.items()
           if k not in ("APR_THREADS", "OMP_NUM_THREADS", "OMP_WAIT_POLICY", "APR_WAIT_POLICY")}
    env.update(env_over)
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, env=env)
    return proc.stdout.splitlines()[-1].split(), proc.stderr


def test_the_cli_applies_the_count_and_the_wait_policy():
    out, _ = _probe("--threads", "1", "plugins", APR_WAIT_POLICY="passive")
    assert out == ["0", "1", "1", "PASSIVE"]
    out, _ = _probe("plugins", APR_WAIT_POLICY="default")
    assert out[3] == "None"
    out, _ = _probe("plugins", APR_THREADS="2")
    assert out[:3] == ["0", "2", "2"]
    out, err = _probe("--threads", "none", "plugins")
    assert out[0] == "2" and err.strip().splitlines() == ["apr: error: --threads 'none' is not a positive number "
                                                          "of threads or 'auto'"]


def _bf16_model(llama_apr, tmp_path):
    out = tmp_path / "bf16.apr"
    pipeline.save(pipeline.cast(pipeline.load(llama_apr), "bf16"), str(out))
    return pipeline.load(str(out))


def test_cpu_auto_precision_follows_the_stored_type_and_the_cpu(llama_apr, tmp_path, monkeypatch):
    f32, bf16 = pipeline.load(llama_apr), _bf16_model(llama_apr, tmp_path)
    assert device.stored_float_dtype(f32) == "F32" and device.stored_float_dtype(bf16) == "BF16"
    monkeypatch.setattr(device, "_NATIVE_BF16", True)
    assert device.resolve_dtype("auto", "cpu", bf16) == "bfloat16"
    assert device.resolve_dtype("auto", "cpu", f32) == "float32"
    assert device.resolve_dtype("float32", "cpu", bf16) == "float32"
    assert device.resolve_dtype("auto", "cpu") == "float32"
    monkeypatch.setattr(device, "_NATIVE_BF16", False)
    assert device.resolve_dtype("auto", "cpu", bf16) == "float32"


def test_perplexity_of_a_bf16_model_computes_in_bf16_where_the_cpu_can(llama_apr, tmp_path, monkeypatch):
    from apr_core.technique import RunContext

    monkeypatch.setattr(device, "_NATIVE_BF16", True)
    sample = tmp_path / "text.txt"
    sample.write_text("def add(a, b):\n    return a + b\n\n" * 20)
    model = _bf16_model(llama_apr, tmp_path)
    result = pipeline.evaluate("perplexity", model, {"dataset": str(sample), "seq_len": "32"}, RunContext(quiet=True))
    assert result["dtype"] == "bfloat16"
    result = pipeline.evaluate("perplexity", pipeline.load(llama_apr), {"dataset": str(sample), "seq_len": "32"},
                               RunContext(quiet=True))
    assert result["dtype"] == "float32"
    json.dumps(result)


def test_the_cli_fixes_glibcs_mmap_threshold_when_asked():
    from apr_core.runtime import malloc

    assert malloc.threshold({}) == 0
    assert malloc.threshold({"MALLOC_MMAP_THRESHOLD_": "65536"}) == 0
    assert malloc.threshold({"APR_MMAP_THRESHOLD": "0"}) == 0
    assert malloc.threshold({"APR_MMAP_THRESHOLD": "262144"}) == 262144
    probe = ("import sys\nfrom apr_core import cli\nfrom apr_core.runtime import malloc\n"
             "try:\n    cli.main(['plugins'])\nexcept SystemExit:\n    pass\nprint(malloc._threshold)\n")
    env = {k: v for k, v in os.environ.items() if k not in ("MALLOC_MMAP_THRESHOLD_", "APR_MMAP_THRESHOLD")}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env).stdout
    assert out.splitlines()[-1] == "0"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         env=env | {"APR_MMAP_THRESHOLD": "1048576"}).stdout
    assert out.splitlines()[-1] == "1048576"


def test_a_training_step_trims_the_heap_only_when_it_holds_much_more_free_than_in_use(monkeypatch):
    from apr_core.runtime import malloc

    held = malloc.heap_bytes()
    if held is not None:  # glibc: the figures are real
        assert held[0] > 0 and held[1] >= 0
    trims = []
    monkeypatch.setattr(malloc, "trim_heap", lambda: trims.append(1))
    for in_use, free, trimmed in ((100 << 20, 300 << 20, True), (100 << 20, 200 << 20, False),
                                  (400 << 20, 300 << 20, False)):
        monkeypatch.setattr(malloc, "heap_bytes", lambda: (in_use, free))
        assert malloc.trim_slack() is trimmed
    assert len(trims) == 1
    monkeypatch.setattr(malloc, "heap_bytes", lambda: None)  # not glibc: nothing to do
    assert malloc.trim_slack() is False


def test_a_merge_keeps_its_chunk_buffers_on_the_heap(tmp_path):
    """In a fresh process a merge fixes glibc's mmap and trim thresholds at the chunk values (the
    first caller wins); a threshold the user set is left alone."""
    from apr_core.testing import tiny_model

    a, b = tmp_path / "a.apr", tmp_path / "b.apr"
    pipeline.save(tiny_model(seed=1), str(a))
    pipeline.save(tiny_model(seed=2), str(b))
    probe = ("import ctypes, sys\nfrom apr_core.runtime import malloc\ncalls = []\n"
             "class Libc:\n    def mallopt(self, what, value):\n        calls.append((what, value))\n        return 1\n"
             "malloc._libc = Libc()\nfrom apr_core import cli\n"
             f"try:\n    cli.main(['merge', {str(a)!r}, {str(b)!r}, '--strategy', 'average', '-o', {str(tmp_path / 'm.apr')!r}, '-q'])\n"
             "except SystemExit:\n    pass\nprint(calls)\n")
    env = {k: v for k, v in os.environ.items() if k not in ("MALLOC_MMAP_THRESHOLD_", "APR_MMAP_THRESHOLD")}
    from apr_core.runtime import malloc

    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env)
    assert out.stdout.splitlines()[-1] == str([(malloc.M_MMAP_THRESHOLD, malloc.CHUNK_MMAP_BYTES),
                                               (malloc.M_TRIM_THRESHOLD, malloc.CHUNK_TRIM_BYTES)]), out.stderr
    out = subprocess.run([sys.executable, "-c", probe.replace("m.apr", "m2.apr")], capture_output=True, text=True,
                         env=env | {"MALLOC_MMAP_THRESHOLD_": "65536"})
    assert out.stdout.splitlines()[-1] == "[]", out.stderr


def test_help_does_not_sample_the_load(monkeypatch, capsys):
    from apr_core import cli

    def refuse(*_args, **_kwargs):
        raise AssertionError("sampled the load for --help")

    monkeypatch.setattr(threads, "others_busy_cores", refuse)
    monkeypatch.delenv("APR_WAIT_POLICY", raising=False)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("APR_THREADS", raising=False)
    for args in (["--help"], ["merge", "--help"], ["--version"]):
        with pytest.raises(SystemExit) as exit_:
            cli.main(args)
        assert exit_.value.code == 0
    assert "Usage" in capsys.readouterr().out
    with pytest.raises(AssertionError, match="sampled"):  # a real command does sample
        cli.main(["plugins"])
