"""Plugin discovery: entry points, allow/deny lists, duplicate names, misspelt hooks, third parties."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from apr_core import hookimpl
from apr_core.errors import PluginError
from apr_core.plugins import build
from apr_core.technique import TransformTechnique
from helpers import run_apr

ROOT = Path(__file__).resolve().parent.parent


class _Dummy(TransformTechnique):
    kind = "merge"
    name = "dummy"

    def transform(self, inputs, params, context):
        return inputs[0]


def test_builtins_come_from_entry_points():
    _, registry = build()
    assert ("evaluate", "perplexity") in registry.techniques
    assert registry.techniques[("evaluate", "perplexity")].distribution == "apr"
    assert {p.name for p in registry.plugins} >= {"formats", "eval", "merge", "prune", "quantize"}


def test_allow_and_deny_lists(monkeypatch):
    monkeypatch.setenv("APR_DISABLE_PLUGINS", "perplexity,merge/ties")
    _, registry = build()
    assert ("evaluate", "perplexity") not in registry.techniques
    assert ("merge", "ties") not in registry.techniques and ("merge", "dare_ties") in registry.techniques
    monkeypatch.setenv("APR_DISABLE_PLUGINS", "quantize")
    _, registry = build()
    assert not registry.of_kind("quantize") and "quantize" not in registry.commands()
    monkeypatch.delenv("APR_DISABLE_PLUGINS")
    monkeypatch.setenv("APR_PLUGINS", "formats")
    _, registry = build()
    assert [p.name for p in registry.plugins] == ["formats"]


def test_duplicate_technique_names_are_refused():
    class A:
        @hookimpl
        def apr_register_techniques(self, register):
            register(_Dummy())

    with pytest.raises(PluginError, match="registered twice"):
        build(extra_plugins=[("a", A()), ("b", A())])


def test_misspelt_hook_fails_loudly():
    class Typo:
        @hookimpl
        def apr_register_technique(self, register):  # missing "s"
            pass

    with pytest.raises(PluginError, match="unknown hook"):
        build(extra_plugins=[("typo", Typo())])


def test_transform_hook_can_wrap_every_technique():
    from apr_core.plugins import hookimpl as hi

    seen = []

    class Spy:
        @hi(hookwrapper=True)
        def apr_transform(self, technique, inputs, params, context):
            seen.append(technique.name)
            yield

    from apr_core import pipeline, plugins
    from apr_core.testing import tiny_model

    plugins.use(build(extra_plugins=[("spy", Spy()), ("dummy", _reg(_Dummy()))]))
    try:
        model = tiny_model("llama")
        out = pipeline.transform("merge", "dummy", [model, model], {})
        assert seen == ["dummy"]
        assert out.provenance[-1]["technique"] == "dummy"
        pipeline.transform("merge", "average", [model, model], {})
        assert seen == ["dummy", "average"]  # the wrapper sees every technique the pipeline runs
    finally:
        plugins.use(None)


def _reg(technique):
    class P:
        @hookimpl
        def apr_register_techniques(self, register):
            register(technique)

    return P()


@pytest.fixture(scope="module")
def example_site(tmp_path_factory):
    """examples/apr-example-plugin pip-installed into its own directory (no core edit)."""
    target = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(ROOT / "examples" / "apr-example-plugin")],
        capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return str(target)


def test_third_party_plugin_is_listed_and_runs(example_site, tmp_path, tiny_dir):
    from apr_core.testing import write_tiny

    env = {"PYTHONPATH": example_site + os.pathsep + os.environ.get("PYTHONPATH", "")}
    rows = json.loads(run_apr("plugins", "--json", env=env, check=True).stdout)
    ex = [r for r in rows if r["plugin"] == "example-median"]
    assert ex and ex[0]["distribution"] == "apr-example-plugin" and ex[0]["version"] == "0.2.0"
    assert ex[0]["techniques"] == [{"kind": "merge", "name": "median",
                                    "summary": "element-wise median of the input models (example plugin)"}]
    help_text = run_apr("merge", "--help", env=env, check=True).stdout
    assert "median" in help_text and "--upcast" in help_text
    paths = [write_tiny(tmp_path / f"m{i}.apr", "llama", seed=i) for i in range(3)]
    out = tmp_path / "merged.apr"
    summary = json.loads(run_apr("merge", *paths, "--strategy", "median", "-o", str(out), "--json",
                                 env=env, check=True).stdout)
    assert summary["technique"] == "median" and out.exists()
    check = ("from apr_core import pipeline; import torch\n"
             f"ms = [pipeline.load(p) for p in {paths!r}]; out = pipeline.load({str(out)!r})\n"
             "n = 'model.layers.0.mlp.up_proj.weight'\n"
             "ref = torch.stack([m.tensor(n) for m in ms]).median(dim=0).values\n"
             "assert torch.equal(out.tensor(n), ref)\n"
             "assert out.provenance[-1]['technique'] == 'median'\n")
    subprocess.run([sys.executable, "-c", check], check=True, env=dict(os.environ, **env))
    contract = ("import sys, tempfile\nfrom apr_core.testing import check_technique\n"
                "check_technique('merge', 'median', tempfile.mkdtemp())\n")
    proc = subprocess.run([sys.executable, "-c", contract], env=dict(os.environ, **env),
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_disallowed_option_for_a_technique_is_one_line(example_site, llama_apr, tmp_path):
    env = {"PYTHONPATH": example_site}
    proc = run_apr("merge", llama_apr, llama_apr, "--strategy", "median", "--upcast", "-o", str(tmp_path / "o.apr"),
                   env=env)
    assert proc.returncode == 0, proc.stderr
    proc = run_apr("merge", llama_apr, "--strategy", "median", "-o", str(tmp_path / "p.apr"), env=env)
    assert proc.returncode == 2 and "takes at least 2" in proc.stderr
    assert not (tmp_path / "p.apr").exists()


def test_plugin_kinds_with_shared_options_and_actions(tmp_path, llama_apr):
    """A plugin can add a command family; shared options reach techniques; actions write nothing."""
    from apr_core import plugins
    from apr_core.cli import main
    from apr_core.params import Param
    from apr_core.technique import Kind

    seen = {}

    class Scale(TransformTechnique):
        kind = "rescale"
        name = "scale"
        summary = "multiply every weight"
        params = (Param("factor", "float", 1.0, min=0),)
        actions = ("audit",)

        def transform(self, inputs, params, context):
            seen["transform"] = dict(params)
            context.report["factor"] = params["factor"]
            return inputs[0]

        def audit(self, inputs, params, context):
            seen["audit"] = dict(params)
            return {"tensors": len(inputs[0].tensors), "strict": params["strict"]}

    kind = Kind("rescale", "how", "Rescale weights.", options=(Param("strict", "bool", False),),
                actions=("audit",))

    class P:
        @hookimpl
        def apr_register_techniques(self, register):
            register(kind)
            register(Scale())

    plugins.use(build(extra_plugins=[("rescale", P())]))
    try:
        with pytest.raises(SystemExit) as code:
            main(["rescale", llama_apr, "--how", "scale", "--audit", "--strict", "--json"])
        assert code.value.code == 0 and seen["audit"] == {"factor": 1.0, "strict": True}
        assert not list(tmp_path.iterdir())
        with pytest.raises(SystemExit) as code:
            main(["rescale", llama_apr, "--how", "scale", "--factor", "2", "-o", str(tmp_path / "o.apr")])
        assert code.value.code == 0 and seen["transform"] == {"factor": 2.0, "strict": False}
        with pytest.raises(SystemExit) as code:
            main(["rescale", llama_apr, "--how", "scale", "--factor", "-1", "-o", str(tmp_path / "p.apr")])
        assert code.value.code == 2 and not (tmp_path / "p.apr").exists()
    finally:
        plugins.use(None)
