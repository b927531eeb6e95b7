"""Hostile inputs (issue 10): names from model files, -o that would destroy data, tracebacks where
one line was promised, inconsistent models, GGUF layout, leftovers and the smaller defects.

Each test reproduces one reported defect and asserts the fixed behaviour: one error line with
exit 2 and nothing written (or the truthful result)."""

import gzip
import json
import os
import signal
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from apr_core import pipeline
from apr_core.atomic import MANIFEST, atomic_file, check_destination, owner_tag, remove_stale
from apr_core.errors import AprError, CorruptFileError
from apr_core.formats.apr import write_apr
from apr_core.formats.safetensors import model_metadata, write_safetensors
from apr_core.fuzzing import AprParts, apr_with_metadata, safetensors_build, safetensors_parts
from apr_core.names import shard_names, tokenizer_files, write_into
from apr_core.testing import tiny_model
from helpers import one_error_line, run_apr

DATA = Path(__file__).parent / "data"
HOSTILE_NAMES = [
    "/tmp/apr-hostile-absolute",       # absolute
    "../../apr-hostile-up",            # climbs out
    "sub/tokenizer.json",              # a path, not a name
    "..",
    "",
    "tokenizer.json\x00.txt",           # NUL byte
    "Tokenizer.json",                  # differs only in case from tokenizer.json
    "tokenizer.json/../../x",          # symlink-style traversal through a real name
    "run.py",                          # plain, but not a tokenizer file
]


@pytest.fixture(scope="module")
def seed(tmp_path_factory):
    d = tmp_path_factory.mktemp("seed")
    model = tiny_model("llama")
    write_apr(model, d / "m.apr")
    return {"dir": d, "model": model, "apr": (d / "m.apr").read_bytes()}


def _hostile_apr(seed, path, name):
    path.write_bytes(apr_with_metadata(
        seed["apr"], lambda meta: meta["custom"]["tokenizer_files"].update({name: {"text": "pwned"}})))
    return path


def _escaped(root: Path) -> list[str]:
    """Files a hostile name could have created: outside the work dir, or the absolute target."""
    hits = [str(p) for p in root.rglob("*") if "hostile" in p.name or p.name in ("x", "pwned")]
    return hits + [p for p in ("/tmp/apr-hostile-absolute", "/tmp/apr-hostile-up") if os.path.exists(p)]


# --------------------------------------------------------------------------- 1. names from files

@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_tokenizer_name_in_apr_is_refused_by_every_command(tmp_path, seed, name):
    work = tmp_path / "deep" / "work"
    work.mkdir(parents=True)
    bad = _hostile_apr(seed, work / "bad.apr", name)
    commands = [["inspect", str(bad)], ["export", str(bad), "--format", "hf", "-o", str(work / "out")],
                ["import", str(bad), "-o", str(work / "copy.apr")]]
    if name in ("../../apr-hostile-up", "/tmp/apr-hostile-absolute"):
        commands.append(["eval", str(bad), "--dataset", str(DATA / "mbpp-mini.jsonl")])
    for cmd in commands:
        line = one_error_line(run_apr(*cmd, cwd=work))
        assert "tokenizer file name" in line and "not allowed" in line, line
    assert sorted(p.name for p in work.iterdir()) == ["bad.apr"]
    assert _escaped(tmp_path) == []


def test_tokenizer_names_differing_only_in_case_are_refused(tmp_path, seed):
    bad = tmp_path / "case.apr"
    bad.write_bytes(apr_with_metadata(seed["apr"], lambda m: m["custom"]["tokenizer_files"].update(
        {"Tokenizer.json": m["custom"]["tokenizer_files"]["tokenizer.json"]})))
    assert "'Tokenizer.json' is not allowed" in one_error_line(run_apr("inspect", str(bad)))


@pytest.mark.parametrize("name", ["../../apr-hostile-up", "/tmp/apr-hostile-absolute", "a\x00b"])
def test_hostile_tokenizer_name_in_safetensors_is_refused(tmp_path, seed, name):
    meta = model_metadata(seed["model"])
    meta["apr.tokenizer"] = json.dumps({name: {"text": "pwned"}, "tokenizer.json": {"text": "{}"}})
    bad = tmp_path / "bad.safetensors"
    write_safetensors(seed["model"].tensors, bad, metadata=meta)
    for cmd in (["inspect", str(bad)], ["import", str(bad), "-o", str(tmp_path / "o.apr")]):
        assert "not allowed" in one_error_line(run_apr(*cmd, cwd=tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.safetensors"]
    assert _escaped(tmp_path) == []


@pytest.mark.parametrize("shard", ["../outside.safetensors", "/etc/passwd", "a\x00.safetensors", "", 5,
                                   "model.py", ".."])
def test_hostile_shard_names_in_an_hf_index_are_refused(tmp_path, seed, shard):
    hf = Path(pipeline.save(seed["model"], str(tmp_path / "hf"), "hf"))
    names = [n for n in safetensors_parts((hf / "model.safetensors").read_bytes())[0] if n != "__metadata__"]
    (hf / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {n: shard for n in names}}))
    line = one_error_line(run_apr("inspect", str(hf)))
    assert "shard name" in line and "not a plain" in line, line


def test_shard_names_differing_only_in_case_are_refused():
    with pytest.raises(CorruptFileError, match="differ only in case"):
        shard_names(["model-1.safetensors", "MODEL-1.safetensors"], "index")
    assert shard_names(["b.safetensors", "a.safetensors", "a.safetensors"], "index") == ["a.safetensors",
                                                                                         "b.safetensors"]


def test_writers_check_names_and_never_follow_a_planted_symlink(tmp_path):
    with pytest.raises(CorruptFileError, match="not allowed"):
        tokenizer_files({"../x": b""}, "model")
    outside = tmp_path / "outside.txt"
    outside.write_text("keep")
    stage = tmp_path / "stage"
    stage.mkdir()
    (stage / "tokenizer.json").symlink_to(outside)
    with pytest.raises(FileExistsError):
        write_into(stage, "tokenizer.json", b"pwned", "model")
    assert outside.read_text() == "keep"
    with pytest.raises(CorruptFileError):
        write_into(stage, "../outside.txt", b"pwned", "model")
    model = tiny_model("llama")
    model.tokenizer["../../pwned"] = b"x"  # a Python caller's hostile handle
    for fmt, dest in (("hf", tmp_path / "hf"), ("apr", tmp_path / "m.apr"), ("safetensors", tmp_path / "m.st")):
        with pytest.raises(CorruptFileError, match="not allowed"):
            pipeline.save(model, str(dest), fmt)
    from apr_core.torch_bridge import load_tokenizer

    with pytest.raises(CorruptFileError, match="not allowed"):
        load_tokenizer(model)
    assert _escaped(tmp_path) == [] and not (tmp_path / "hf").exists()


def test_gguf_tokenizer_capture_goes_through_the_allow_list(tmp_path, monkeypatch):
    import transformers

    # the capture runs when a GGUF's tokenizer is first built; a memo of an earlier (checked) build
    # of the same metadata would answer without it
    monkeypatch.setenv("APR_MEMO", "0")

    path = pipeline.save(tiny_model("llama"), str(tmp_path / "m.gguf"), dtype="f32")
    real = transformers.AutoTokenizer.from_pretrained

    def hostile(*args, **kwargs):
        tok = real(*args, **kwargs)
        save = tok.save_pretrained

        def save_with_extra(directory, **kw):
            out = save(directory, **kw)
            (Path(directory) / "evil.py").write_text("import os")
            return out

        tok.save_pretrained = save_with_extra
        return tok

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", hostile)
    with pytest.raises(CorruptFileError, match="'evil.py' is not allowed"):
        pipeline.load(path)


# --------------------------------------------------------------------------- 3. -o destroys data

def test_o_refuses_a_plain_directory_even_with_force(tmp_path, seed):
    src = seed["dir"] / "m.apr"
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "precious.txt").write_text("keep")
    for extra in ([], ["--force"]):
        line = one_error_line(run_apr("export", str(src), "--format", "hf", "-o", str(plain), *extra))
        assert "apr did not write" in line and "precious.txt" in line
    assert (plain / "precious.txt").read_text() == "keep" and sorted(os.listdir(plain)) == ["precious.txt"]


def test_apr_written_directory_is_replaced_but_not_with_foreign_files(tmp_path, seed):
    out = tmp_path / "hf"
    (tmp_path / "empty").mkdir()
    pipeline.save(seed["model"], str(tmp_path / "empty"), "hf")  # an empty directory may be replaced
    pipeline.save(seed["model"], str(out), "hf")
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["written_by"] == "apr" and "model.safetensors" in manifest["files"]
    pipeline.save(tiny_model("llama", seed=3), str(out), "hf")  # apr's own output: replaced
    (out / "notes.txt").write_text("mine")
    with pytest.raises(AprError, match="notes.txt, which apr did not write"):
        pipeline.save(seed["model"], str(out), "hf")
    assert (out / "notes.txt").read_text() == "mine"


def test_o_naming_the_input_is_refused_unless_forced(tmp_path, seed):
    src = tmp_path / "m.apr"
    src.write_bytes(seed["apr"])
    line = one_error_line(run_apr("quantize", str(src), "--scheme", "int8", "-o", str(src)))
    assert "is the input" in line and "--force" in line
    assert src.read_bytes() == seed["apr"]
    merged = one_error_line(run_apr("merge", str(src), str(seed["dir"] / "m.apr"), "--strategy", "average",
                                    "-o", str(src)))
    assert "is the input" in merged
    run_apr("quantize", str(src), "--scheme", "int8", "-o", str(src), "--force", check=True)
    assert "APR_Q8" in pipeline.load(str(src)).dtype_counts()


def test_import_of_an_hf_directory_into_itself_never_deletes_it(tmp_path, seed):
    hf = tmp_path / "downloaded"
    pipeline.save(seed["model"], str(hf), "hf")
    (hf / MANIFEST).unlink()  # as transformers or the Hub would have written it
    (hf / "README.md").write_text("model card")
    assert "is the input" in one_error_line(run_apr("import", str(hf), "-o", str(hf)))
    assert "apr did not write" in one_error_line(run_apr("import", str(hf), "-o", str(hf), "--force"))
    assert (hf / "README.md").read_text() == "model card" and (hf / "model.safetensors").is_file()


def test_o_dot_is_a_clear_line(tmp_path, seed):
    line = one_error_line(run_apr("export", str(seed["dir"] / "m.apr"), "--format", "hf", "-o", ".",
                                  cwd=tmp_path))
    assert "is the current directory" in line and "busy" not in line
    assert list(tmp_path.iterdir()) == []


def test_check_destination_rules(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.apr").write_bytes(b"x")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "inner.apr").write_bytes(b"x")
    check_destination("new.apr", ["in.apr"])
    with pytest.raises(AprError, match="above the current"):
        check_destination("..")
    with pytest.raises(AprError, match="contains the input"):
        check_destination("d", ["d/inner.apr"])
    check_destination("in.apr", ["in.apr"], force=True)
    os.link(tmp_path / "in.apr", tmp_path / "hard.apr")
    with pytest.raises(AprError, match="is the input"):
        check_destination("hard.apr", ["in.apr"])


# --------------------------------------------------------------------------- 5. one line, not a traceback

def _edit_config(seed, path, **changes):
    def edit(meta):
        meta["custom"]["hf_config"].update(changes)
    path.write_bytes(apr_with_metadata(seed["apr"], edit))
    return str(path)


@pytest.mark.parametrize("entry,needle", [
    ({"base64": "//79"}, "tokenizer.json is not UTF-8"),
    ({"text": "{garbage"}, "tokenizer.json is not valid JSON"),
    ({"text": "[1, 2]"}, "tokenizer.json is a list, not an object"),
    ({"text": '{"model": {"vocab": {"a": 1099511627776}}}'}, "id of the vocabulary"),
])
def test_garbage_tokenizer_inside_a_model_is_one_line(tmp_path, seed, entry, needle):
    bad = tmp_path / "t.apr"
    bad.write_bytes(apr_with_metadata(seed["apr"],
                                      lambda m: m["custom"]["tokenizer_files"].update({"tokenizer.json": entry})))
    assert needle in one_error_line(run_apr("inspect", str(bad)))


@pytest.mark.parametrize("edit", [lambda m: m["custom"].update(hf_config=[1]), lambda m: m.update(custom="x")])
def test_apr_config_of_the_wrong_json_type_is_one_line(tmp_path, seed, edit):
    bad = tmp_path / "c.apr"
    bad.write_bytes(apr_with_metadata(seed["apr"], edit))
    assert "custom.hf_config is not an object" in one_error_line(run_apr("inspect", str(bad)))


def test_garbage_files_inside_an_hf_directory_are_one_line(tmp_path, seed):
    hf = Path(pipeline.save(seed["model"], str(tmp_path / "hf"), "hf"))
    (hf / "tokenizer_config.json").write_bytes(b"\xff\xfe{}")
    assert "tokenizer_config.json is not UTF-8" in one_error_line(run_apr("inspect", str(hf)))
    (hf / "config.json").write_bytes(b"\xff\xfe{}")
    assert "not valid UTF-8 JSON" in one_error_line(run_apr("inspect", str(hf)))


@pytest.mark.parametrize("key,value,needle", [
    ("apr.config", "[1, 2]", "apr.config is a list, not an object"),
    ("apr.tokenizer", "[1, 2]", "apr.tokenizer is a list, not an object"),
    ("apr.provenance", '{"a": 1}', "apr.provenance is an object, not a list"),
    ("apr.generation_config", "3", "apr.generation_config is a number, not an object"),
    ("apr.config", "{", "apr.config is not valid JSON"),
])
def test_apr_metadata_of_the_wrong_json_type_is_one_line(tmp_path, seed, key, value, needle):
    meta = model_metadata(seed["model"])
    meta[key] = value
    bad = tmp_path / "bad.safetensors"
    write_safetensors(seed["model"].tensors, bad, metadata=meta)
    assert needle in one_error_line(run_apr("inspect", str(bad)))


def test_zero_sized_dimension_next_to_a_huge_one_is_refused(tmp_path, seed):
    write_safetensors(seed["model"].tensors, tmp_path / "m.safetensors", metadata=model_metadata(seed["model"]))
    header, body = safetensors_parts((tmp_path / "m.safetensors").read_bytes())
    header["extra"] = {"dtype": "F32", "shape": [0, 2 ** 63], "data_offsets": [0, 0]}
    bad = tmp_path / "zero.safetensors"
    bad.write_bytes(safetensors_build(header, body))
    assert "too large" in one_error_line(run_apr("inspect", str(bad)))
    parts = AprParts.parse(seed["apr"])
    entries = parts.entries()
    entries.append(["zz.extra", 0, [0, 2 ** 64 - 1], 0, 0])
    parts.set_entries(entries)
    (tmp_path / "zero.apr").write_bytes(parts.build())
    assert "too large" in one_error_line(run_apr("inspect", str(tmp_path / "zero.apr")))


def test_non_utf8_datasets_and_calibration_are_one_line(tmp_path, seed):
    src = str(seed["dir"] / "m.apr")
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"text": "ok"}\n{"text": "\xff\xfe"}\n')
    assert "bad.jsonl:2: not UTF-8" in one_error_line(run_apr("eval", src, "--dataset", str(bad)))
    raw = tmp_path / "bad.txt"
    raw.write_bytes(b"def f():\n  pass\n\xc3\x28\n")
    assert "bad.txt:3: not UTF-8" in one_error_line(run_apr("eval", src, "--dataset", str(raw)))
    line = one_error_line(run_apr("prune", src, "--method", "wanda", "--calibration", str(bad),
                                  "-o", str(tmp_path / "p.apr")))
    assert "not UTF-8" in line and not (tmp_path / "p.apr").exists()


def _code_eval(src, data, *extra):
    return run_apr("eval", src, "--task", "code", "--data", str(data), "--allow-code-execution",
                   "--isolation", "none", "--unsafe-no-isolation", "--max-tokens", "4", "-q", *extra)


def test_damaged_gzip_and_wrong_field_types_are_one_line(tmp_path, seed):
    from apr_eval.code.problems import load_problems

    notgz = tmp_path / "p.jsonl.gz"
    notgz.write_bytes(b'{"task_id": 1}\n')
    assert "not a complete gzip file" in one_error_line(_code_eval(str(seed["dir"] / "m.apr"), notgz))
    torn = tmp_path / "torn.jsonl.gz"
    torn.write_bytes(gzip.compress((DATA / "humaneval-mini.jsonl").read_bytes())[:-12])
    with pytest.raises(AprError, match="not a complete gzip file"):
        load_problems(torn)
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes((DATA / "humaneval-mini.jsonl").read_bytes() + b'{"task_id": "\xe9"}\n')
    lines = len((DATA / "humaneval-mini.jsonl").read_text().splitlines())
    with pytest.raises(AprError, match=f"latin.jsonl:{lines + 1}: not UTF-8"):
        load_problems(latin)
    rec = json.loads((DATA / "humaneval-mini.jsonl").read_text().splitlines()[0])
    mbpp = json.loads((DATA / "mbpp-mini.jsonl").read_text().splitlines()[0])
    for base, field, value, needle in ((rec, "prompt", 5, "prompt must be a string, not a number"),
                                       (rec, "task_id", [1], "task_id must be a string or an integer"),
                                       (rec, "entry_point", "os.system", "is not a Python name"),
                                       (rec, "canonical_solution", {}, "canonical_solution must be a string"),
                                       (mbpp, "text", {"a": 1}, "text must be a string, not an object"),
                                       (mbpp, "test_setup_code", 3, "test_setup_code must be a string")):
        bad = tmp_path / f"{field}.jsonl"
        bad.write_text(json.dumps(dict(base, **{field: value})) + "\n")
        with pytest.raises(AprError, match=needle):
            load_problems(bad)
    line = one_error_line(_code_eval(str(seed["dir"] / "m.apr"), tmp_path / "prompt.jsonl"))
    assert "prompt must be a string" in line


def test_results_path_that_is_a_directory_and_exit_2_leaves_no_results(tmp_path, seed):
    src = str(seed["dir"] / "m.apr")
    (tmp_path / "resdir").mkdir()
    assert "is a directory" in one_error_line(_code_eval(src, DATA / "mbpp-mini.jsonl", "--results",
                                                         str(tmp_path / "resdir")))
    # an error after the results store is opened (no chat template, --chat) leaves no jsonl
    plain = tiny_model("llama")
    plain.tokenizer.pop("chat_template.jinja")
    write_apr(plain, tmp_path / "nochat.apr")
    line = one_error_line(_code_eval(str(tmp_path / "nochat.apr"), DATA / "mbpp-mini.jsonl", "--chat",
                                     "--results", str(tmp_path / "r" / "res.jsonl"), "--limit", "1"))
    assert "no chat template" in line
    assert not (tmp_path / "r").exists()
    data = tmp_path / "problems.jsonl"
    data.write_bytes((DATA / "mbpp-mini.jsonl").read_bytes())
    line = one_error_line(_code_eval(src, data, "--results", str(data), "--no-resume"))
    assert "is the input" in line and "--force" not in line
    assert data.read_bytes() == (DATA / "mbpp-mini.jsonl").read_bytes()


def test_pruning_a_quantized_model_is_one_line(tmp_path, seed):
    q = tmp_path / "q.apr"
    run_apr("quantize", str(seed["dir"] / "m.apr"), "--scheme", "q8_0", "-o", str(q), check=True)
    for method in ("magnitude", "wanda"):
        line = one_error_line(run_apr("prune", str(q), "--method", method, "-o", str(tmp_path / "p.apr")))
        assert "needs float weights" in line and "Q8_0" in line
    assert not (tmp_path / "p.apr").exists()


# --------------------------------------------------------------------------- 9. model vs config

@pytest.mark.parametrize("changes,needle", [
    ({"num_attention_heads": 0}, "num_attention_heads = 0 is not a positive integer"),
    ({"hidden_size": -64}, "hidden_size = -64 is not a positive integer"),
    ({"vocab_size": "320"}, 'vocab_size = "320" is not a positive integer'),
    ({"num_key_value_heads": 3}, "not a multiple of num_key_value_heads = 3"),
    ({"head_dim": None, "hidden_size": 66}, "hidden_size = 66 is not a multiple of num_attention_heads"),
    ({"intermediate_size": 96}, "mlp.down_proj.weight has shape [64, 128], but the config"),
    ({"num_hidden_layers": 3}, "model has no tensor model.layers.2."),
    ({"num_hidden_layers": 1}, "tensor model.layers.1."),
    ({"head_dim": 2 ** 40}, "head_dim = 1099511627776 is implausibly large"),
    ({"rms_norm_eps": float("nan")}, "rms_norm_eps = nan is not a finite number"),
])
def test_model_inconsistent_with_its_config_is_refused_when_loaded(tmp_path, seed, changes, needle):
    bad = _edit_config(seed, tmp_path / "bad.apr", **changes)
    with pytest.raises(CorruptFileError) as info:
        pipeline.load(bad)
    assert needle in str(info.value), str(info.value)


def test_inconsistent_model_is_not_quantized_with_exit_0(tmp_path, seed):
    bad = _edit_config(seed, tmp_path / "bad.apr", intermediate_size=96)
    line = one_error_line(run_apr("quantize", bad, "--scheme", "int8", "-o", str(tmp_path / "q.apr")))
    assert "intermediate_size=96" in line and not (tmp_path / "q.apr").exists()


def test_legitimate_models_pass_the_check(tmp_path):
    for arch in ("qwen2", "gemma3"):  # tied embeddings: no lm_head.weight
        model = tiny_model(arch)
        assert "lm_head.weight" not in model.tensors
        pipeline.load(pipeline.save(model, str(tmp_path / f"{arch}.apr")))
    q = pipeline.transform("quantize", "q4k", [tiny_model("llama")], {})  # logical shapes of blocks
    pipeline.load(pipeline.save(q, str(tmp_path / "q.apr")))
    m = tiny_model("llama")
    from apr_core.model import LazyTensor
    import torch

    m.tensors["model.rotary_emb.inv_freq"] = LazyTensor.of("model.rotary_emb.inv_freq", torch.ones(8))
    pipeline.load(pipeline.save(m, str(tmp_path / "buffer.apr")))  # older checkpoints saved buffers


# --------------------------------------------------------------------------- 6. GGUF layout

def _gguf_with(tmp_path, edit):
    from apr_core.fuzzing import GgufLayout

    path = pipeline.save(tiny_model("llama"), str(tmp_path / "m.gguf"), dtype="f32")
    layout = GgufLayout.of(Path(path))
    raw = bytearray(Path(path).read_bytes())
    edit(raw, layout)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(bytes(raw))
    return str(bad)


def test_gguf_overlapping_tensors_are_refused(tmp_path):
    def overlap(raw, layout):
        a, b = layout.tensors[0], layout.tensors[1]
        struct.pack_into("<Q", raw, b["offset"], a["value"])

    with pytest.raises(CorruptFileError, match="overlaps another tensor"):
        pipeline.load(_gguf_with(tmp_path, overlap))


@pytest.mark.parametrize("delta", [-1, 1])
def test_gguf_tensor_count_that_disagrees_with_the_infos_is_refused(tmp_path, delta):
    def recount(raw, layout):
        (count,) = struct.unpack_from("<Q", raw, 8)
        struct.pack_into("<Q", raw, 8, count + delta)

    bad = _gguf_with(tmp_path, recount)
    with pytest.raises(CorruptFileError, match="corrupt GGUF"):
        pipeline.load(bad)
    assert "corrupt GGUF" in one_error_line(run_apr("inspect", bad))


# --------------------------------------------------------------------------- 8. leftovers

def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_sigterm_removes_the_temporary_and_exits_143(tmp_path, seed):
    out = tmp_path / "out.apr"
    code = (
        "import os, signal, sys, time\n"
        "from apr_core import cli, pipeline\n"
        "from apr_core.atomic import atomic_file\n"
        "def save(model, dest, fmt=None, **kw):\n"
        "    with atomic_file(dest) as f:\n"
        "        f.write(b'half a model')\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n"
        "        time.sleep(30)\n"
        "pipeline.save = save\n"
        f"cli.main(['export', {str(seed['dir'] / 'm.apr')!r}, '--format', 'apr', '-o', {str(out)!r}])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "apr: terminated"
    assert list(tmp_path.iterdir()) == []


def test_next_write_removes_stale_temporaries_of_dead_processes_only(tmp_path):
    dead, host = _dead_pid(), owner_tag().split("-")[1]
    stale_file = tmp_path / f".m.apr.apr{dead}-{host}.abc123.tmp"
    stale_dir = tmp_path / f".m.apr.apr{dead}-{host}.def456.old"
    live = tmp_path / f".m.apr.{owner_tag()}.ghi789.tmp"
    other_host = tmp_path / f".m.apr.apr{dead}-00000000.jkl.tmp"
    legacy = tmp_path / ".m.apr.x1y2z3.tmp"
    other_output = tmp_path / f".n.apr.apr{dead}-{host}.abc.tmp"
    for p in (stale_file, live, other_host, legacy, other_output):
        p.write_bytes(b"partial")
    stale_dir.mkdir()
    (stale_dir / "model.safetensors").write_bytes(b"old")
    with atomic_file(tmp_path / "m.apr") as f:
        f.write(b"new")
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(["m.apr", live.name, other_host.name, legacy.name, other_output.name])


def test_stale_spill_folders_are_removed(tmp_path, monkeypatch):
    import tempfile

    from apr_core.spill import TensorSpill

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead, host = _dead_pid(), owner_tag().split("-")[1]
    (tmp_path / f"apr-spill-apr{dead}-{host}-abc").mkdir()
    (tmp_path / f"apr-spill-apr{dead}-{host}-abc" / "part00000.safetensors").write_bytes(b"x" * 100)
    (tmp_path / f"apr-spill-{owner_tag()}-live").mkdir()
    spill = TensorSpill()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert f"apr-spill-apr{dead}-{host}-abc" not in names and f"apr-spill-{owner_tag()}-live" in names
    assert spill.path.name.startswith(f"apr-spill-{owner_tag()}-")
    assert remove_stale(tmp_path, "apr-spill-", suffixes=("",)) == 0


# --------------------------------------------------------------------------- 10. smaller things

def test_quantize_to_an_hf_directory_reports_what_it_writes(tmp_path, seed):
    out = run_apr("quantize", str(seed["dir"] / "m.apr"), "--scheme", "q8_0", "-o", str(tmp_path / "qhf"),
                  "--json", check=True)
    report = json.loads(out.stdout)["report"]
    assert report["dtypes"] == {"F32": seed["model"].param_count} and report["bits_per_weight"] == 32.0
    assert "dequantized to F32" in report["note"]
    from apr_core.formats.safetensors import read_safetensors

    tensors, _, _ = read_safetensors(tmp_path / "qhf" / "model.safetensors")
    assert {t.spec.dtype for t in tensors.values()} == {"F32"}


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_outputs_respect_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        f = pipeline.save(tiny_model("llama"), str(tmp_path / "m.apr"))
        d = Path(pipeline.save(tiny_model("llama"), str(tmp_path / "hf"), "hf"))
    finally:
        os.umask(old)
    assert os.stat(f).st_mode & 0o777 == 0o666 & ~umask
    assert os.stat(d).st_mode & 0o777 == 0o777 & ~umask
    for p in d.iterdir():
        assert p.stat().st_mode & 0o777 == 0o666 & ~umask, p


@pytest.mark.parametrize("args,needle", [
    (["--threshold", "nan"], "--threshold must be a finite number"),
    (["--threshold", "inf"], "--threshold must be a finite number"),
    (["--task", "code", "--data", str(DATA / "mbpp-mini.jsonl"), "--allow-code-execution", "--k", "1.5"],
     "--k: '1.5' is not a list of whole numbers"),
    (["--task", "code", "--data", str(DATA / "mbpp-mini.jsonl"), "--allow-code-execution", "--k", "10"],
     "every k is above --samples 1"),
])
def test_bad_eval_options_are_refused(seed, args, needle):
    assert needle in one_error_line(run_apr("eval", str(seed["dir"] / "m.apr"), *args))


def test_offline_wikitext_fails_at_once_without_retry_lines(tmp_path, seed):
    env = {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf-home")}
    proc = run_apr("eval", str(seed["dir"] / "m.apr"), "--dataset", "wikitext-2", env=env)
    line = one_error_line(proc)
    assert "not available offline" in line and "unreachable" in line and "Retry" not in proc.stderr


def test_header_length_equal_to_the_file_size_is_reported_truthfully(tmp_path):
    bad = tmp_path / "h.safetensors"
    bad.write_bytes(struct.pack("<Q", 40) + b"{" + b" " * 31)
    line = one_error_line(run_apr("inspect", str(bad)))
    assert "header length 40 does not fit in the 40-byte file (at most 32 bytes follow" in line
