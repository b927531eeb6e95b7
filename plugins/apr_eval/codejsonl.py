"""Any code benchmark in a jsonl file, each line in either the HumanEval or the MBPP layout.

For in-house problem sets: write ``{"task_id", "prompt", "entry_point", "test"}`` lines (the
test defines ``check(candidate)``) or ``{"task_id", "text", "test_list"}`` lines; both may mix
in one file.
"""

from apr_core.params import Param

from .code.problems import load_problems
from .code.task import CodeTask


class CodeJsonl(CodeTask):
    name = "code"
    summary = "pass@k on any jsonl of problems in HumanEval or MBPP layout (mixed allowed), sandboxed"
    data_param = Param("data", "path", None, "Problems jsonl(.gz), HumanEval or MBPP layout per line",
                       required=True)

    def problems(self, params):
        return load_problems(params["data"]), params["data"]
