"""The evaluation plugin: perplexity, the code tasks (pass@k and teacher-forced classify) and the prompt
strategies.

The ``apr eval`` command itself is the core's evaluate kind (`apr_core.technique.EVALUATE`);
this plugin registers what it can run.
"""

from __future__ import annotations

from apr_core.plugins import hookimpl

from .classify import Classify
from .codejsonl import CodeJsonl
from .humaneval import HumanEval
from .mbpp import Mbpp
from .perplexity import Perplexity
from .prompting.cgo import ChainOfGroundedObjectives
from .prompting.fewshot import FewShot
from .prompting.scot import StructuredChainOfThought
from .prompting.standard import Standard


@hookimpl
def apr_register_techniques(register):
    for technique in (Perplexity(), HumanEval(), Mbpp(), CodeJsonl(), Classify(),
                      Standard(), FewShot(), ChainOfGroundedObjectives(), StructuredChainOfThought()):
        register(technique)
