"""An example third-party apr plugin: ``apr merge a.apr b.apr c.apr --strategy median``.

The element-wise median of N models is a robust alternative to averaging:
one outlier model cannot drag a weight away from the others. It streams one
tensor at a time like every apr merge. Installing this package (``pip install
examples/apr-example-plugin``) is all it takes for the strategy to appear in
``apr plugins`` and ``apr merge --help``.
"""

from __future__ import annotations

from apr_core import hookimpl
from apr_core.errors import AprError
from apr_core.model import LazyTensor
from apr_core.params import Param
from apr_core.technique import TransformTechnique


class Median(TransformTechnique):
    name = "median"
    kind = "merge"
    summary = "element-wise median of the input models (example plugin)"
    min_inputs = 2
    max_inputs = None
    params = (Param("upcast", "bool", True, "Compute in float32 before casting back"),)

    def contract_params(self, workdir, inputs):
        return {}

    def transform(self, inputs, params, context):
        import torch

        first = inputs[0]
        for other in inputs[1:]:
            if other.names() != first.names():
                raise AprError(f"{other.source}: tensor names differ from {first.source}")
        out = first.derive()
        for name, lazy in first.tensors.items():
            def load(name=name, spec=lazy.spec):
                parts = [m.tensor(name) for m in inputs]
                stacked = torch.stack([p.float() if params["upcast"] else p for p in parts])
                # torch.median picks the lower middle value for an even count: use the mean of the two
                n = len(parts)
                ordered = stacked.sort(dim=0).values
                mid = (ordered[(n - 1) // 2] + ordered[n // 2]) / 2
                return mid.to(spec.dt.torch_dtype())

            out.tensors[name] = LazyTensor(lazy.spec, load)
        return out


@hookimpl
def apr_register_techniques(register):
    register(Median())
