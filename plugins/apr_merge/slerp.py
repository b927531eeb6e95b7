"""SLERP: spherical linear interpolation between two models, tensor by tensor (Shoemake 1985).

``--weights a,b`` gives each model's share: ``0.85,0.15`` keeps 85% of the
first model and takes 15% of the second, i.e. the interpolation parameter is
``t = b / (a + b)`` (0.15), measured from the first model. For each tensor,
with x0, x1 flattened and Omega the angle between them:

    slerp(x0, x1; t) = sin((1-t) Omega) / sin(Omega) * x0 + sin(t Omega) / sin(Omega) * x1

The angle uses the normalised vectors; the coefficients apply to the
unnormalised ones (as in mergekit and White 2016). Where the tensors are
(anti-)parallel (|cos Omega| > 0.9995) or one is zero, sin(Omega) is too small
to divide by and plain linear interpolation ``x0 + t (x1 - x0)`` is used.
t = 0 and t = 1 return the endpoints exactly.
"""

from __future__ import annotations

import math

from apr_core.errors import AprError

from .common import MergeTechnique, weights_param

PARALLEL = 0.9995


class Slerp(MergeTechnique):
    name = "slerp"
    summary = "spherical interpolation of two models (--weights a,b: a share of the first, t = b)"
    paper = "Shoemake 1985 (slerp); White 2016, Sampling generative networks"
    min_inputs = 2
    max_inputs = 2
    params = (weights_param("Shares of the first and second model, a,b: 0.85,0.15 keeps 85% of the first "
                            "(interpolation t = b/(a+b))", default=(0.5, 0.5)),)

    def check_inputs(self, inputs, params):
        super().check_inputs(inputs, params)
        if len(params["weights"]) != 2:
            raise AprError("slerp --weights takes two values a,b (shares of the first and second model)")

    @staticmethod
    def t(params) -> float:
        a, b = params["weights"]
        return b / (a + b)

    def prepare(self, plan, views, base, params, context):
        import torch

        from .common import CHUNK

        dot = n0 = n1 = 0.0
        x0, x1 = views
        for start in range(0, x0.numel(), CHUNK):
            a = x0[start:start + CHUNK].to(context.device).double()
            b = x1[start:start + CHUNK].to(context.device).double()
            dot += float(torch.dot(a, b))
            n0 += float(torch.dot(a, a))
            n1 += float(torch.dot(b, b))
        if n0 == 0 or n1 == 0:
            return None
        cos = max(-1.0, min(1.0, dot / math.sqrt(n0 * n1)))
        if abs(cos) > PARALLEL:
            return None
        omega = math.acos(cos)
        t = self.t(params)
        return math.sin((1 - t) * omega) / math.sin(omega), math.sin(t * omega) / math.sin(omega)

    def combine(self, chunks, base, state, start, plan, params, context):
        x0, x1 = chunks
        if state is None:
            return x0 + self.t(params) * (x1 - x0)
        c0, c1 = state
        return c0 * x0 + c1 * x1

    def report_lines(self, inputs, base, plans, notes, params):
        report = super().report_lines(inputs, base, plans, notes, params)
        a, b = params["weights"]
        report["t"] = f"{self.t(params):g} ({a:g} of {inputs[0].source}, {b:g} of {inputs[1].source})"
        return report
