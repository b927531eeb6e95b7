"""Average: the arithmetic mean of the models' weights ("model soup", Wortsman et al. 2022).

The quick baseline of the playbook's table, for models fine-tuned from one
base with similar recipes. Any number of inputs (at least two).
"""

from __future__ import annotations

from apr_core.plugins import hookimpl

from .linear import LinearMerge


class Average(LinearMerge):
    name = "average"
    summary = "arithmetic mean of the models' weights"
    paper = "Wortsman et al. 2022, Model soups (uniform soup)"


@hookimpl
def apr_register_techniques(register):
    register(Average())
