"""Weighted: a weighted mean of the models, ``--weights 0.7,0.3`` (one weight per model).

The weights are normalised to sum to 1, so ``0.7,0.3`` and ``7,3`` mean the
same; ``1,0`` returns the first model unchanged.
"""

from __future__ import annotations

from apr_core.plugins import hookimpl

from .common import weights_param
from .linear import LinearMerge


class Weighted(LinearMerge):
    name = "weighted"
    summary = "weighted mean of the models (--weights, one per model, normalised)"
    paper = "Wortsman et al. 2022 (weighted soups); Matena & Raffel 2022 (weighted averaging)"
    params = (weights_param("One weight per model, normalised to sum to 1 (e.g. 0.7,0.3)", required=True),)

    def contract_params(self, workdir, input_paths):
        return {"weights": ",".join(["0.7", "0.3", "0.1", "0.1"][:len(input_paths)])}


@hookimpl
def apr_register_techniques(register):
    register(Weighted())
