"""The CLI as a user meets it: JSON output, one-line errors with exit 2, no torch for --help."""

import json

import pytest

from helpers import one_error_line, run_apr, run_without_heavy_imports


def test_help_and_plugins_do_not_import_torch():
    run_without_heavy_imports(["--help"], ["plugins"], ["plugins", "--json"], ["import", "--help"], ["eval", "--help"])


def test_import_inspect_eval_export(tmp_path, tiny_dir):
    from apr_core import pipeline
    from apr_core.testing import tiny_model

    hf = str(tmp_path / "hf")
    pipeline.save(tiny_model("llama"), hf, "hf")
    run_apr("import", hf, "-o", str(tmp_path / "m.apr"), "--dtype", "bf16", check=True)
    info = json.loads(run_apr("inspect", str(tmp_path / "m.apr"), "--json", check=True).stdout)
    assert info["dtypes"] == {"BF16": info["params"]}
    assert info["tokenizer"]["chat_template"] and info["tokenizer"]["type"] == "BPE"
    assert info["checksum_verified"] and info["provenance"][-1]["operation"] == "import"
    assert info["provenance"][-1]["inputs"][0]["sha256"]
    sample = tmp_path / "s.jsonl"
    sample.write_text("\n".join(json.dumps({"text": "def add(a, b):\n    return a + b\n" * 5}) for _ in range(4)))
    res = json.loads(run_apr("eval", str(tmp_path / "m.apr"), "--dataset", str(sample), "--seq-len", "16",
                             "--json", check=True).stdout)
    assert res["metric"] == "perplexity" and res["value"] > 1 and res["seq_len"] == 16
    run_apr("export", str(tmp_path / "m.apr"), "--format", "safetensors", "-o", str(tmp_path / "m.safetensors"),
            check=True)
    assert (tmp_path / "m.safetensors").stat().st_size > 0


def test_eval_threshold_sets_exit_code(llama_apr, tmp_path):
    sample = tmp_path / "s.txt"
    sample.write_text("for i in range(10):\n    print(i)\n" * 10)
    ok = run_apr("eval", llama_apr, "--dataset", str(sample), "--seq-len", "32", "--threshold", "1e9")
    assert ok.returncode == 0, ok.stderr
    bad = run_apr("eval", llama_apr, "--dataset", str(sample), "--seq-len", "32", "--threshold", "1.5", "--json")
    assert bad.returncode == 1 and json.loads(bad.stdout)["passed"] is False


@pytest.mark.parametrize("args,needle", [
    (["inspect", "missing.apr"], "no such file"),
    (["import", "nowhere/model", "-o", "x.apr"], "no such file"),
    (["eval", "{model}", "--dataset", "no-such-corpus"], "unknown dataset"),
    (["eval", "{model}", "--seq-len", "1"], "--seq-len must be in"),
    (["eval", "{model}", "--task", "nope"], "unknown evaluate technique"),
    (["eval", "{model}", "--dataset", "wikitext-2"], "not available offline"),
    (["export", "{model}", "--format", "onnx", "-o", "x.onnx"], "--format"),
    (["import", "{model}", "-o", "out.weird"], "cannot tell the format"),
    (["import", "{model}", "-o", "x.apr", "--dtype", "int3"], "--dtype"),
    (["import", "hf://justonename", "-o", "x.apr"], "bad model reference"),
    (["inspect", "{unknown}"], "unknown model format"),
    (["inspect", "{corrupt}"], "corrupt .apr"),
    (["eval", "{model}", "--dataset", "{empty}"], "empty"),
    (["eval", "{model}", "--dataset", "{badjsonl}"], ":2: not valid JSON"),
    (["frobnicate"], "No such command"),
])
def test_user_errors_are_one_line_exit_2(tmp_path, llama_apr, args, needle):
    unknown = tmp_path / "weights.xyz"
    unknown.write_bytes(b"hello")
    corrupt = tmp_path / "corrupt.apr"
    data = bytearray(open(llama_apr, "rb").read())
    data[len(data) // 2] ^= 0x10
    corrupt.write_bytes(bytes(data))
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    badjsonl = tmp_path / "bad.jsonl"
    badjsonl.write_text('{"text": "ok"}\n{not json\n')
    subs = {"{model}": llama_apr, "{unknown}": str(unknown), "{corrupt}": str(corrupt), "{empty}": str(empty),
            "{badjsonl}": str(badjsonl)}
    proc = run_apr(*[subs.get(a, a) for a in args], cwd=tmp_path)
    line = one_error_line(proc)
    assert needle in line, line
    assert not (tmp_path / "x.apr").exists()


def test_truncated_file_is_one_line(tmp_path, llama_apr):
    bad = tmp_path / "t.apr"
    bad.write_bytes(open(llama_apr, "rb").read()[:5000])
    for cmd in (["inspect", str(bad)], ["eval", str(bad)], ["export", str(bad), "--format", "hf", "-o",
                                                             str(tmp_path / "o")]):
        line = one_error_line(run_apr(*cmd))
        assert "corrupt" in line or "truncated" in line
    assert not (tmp_path / "o").exists()


def test_version_and_json_plugins():
    out = run_apr("plugins", "--json", check=True)
    rows = json.loads(out.stdout)
    perplexity = [r for r in rows if any(t["name"] == "perplexity" for t in r["techniques"])]
    assert perplexity and perplexity[0]["distribution"] == "apr"
    assert run_apr("--version", check=True).stdout.startswith("apr, version")
