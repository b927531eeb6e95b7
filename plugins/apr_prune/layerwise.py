"""Run a model one decoder layer at a time over calibration data.

The pattern of the Wanda and SparseGPT code, without holding the model: the
transformers module is built with parameters on the meta device; only the
embedding is materialised to compute layer-0 inputs. Every decoder layer is
replaced by a recorder for that first pass, so the exact arguments the model
passes to each layer (attention masks, rotary tables — per layer type for
Gemma 3's sliding/global mix) are captured once. Then each layer in turn is
materialised from the lazy tensors, run (with hooks) over the calibration
batches, modified by the technique, run again to produce the inputs of the
next layer, and released. Peak memory is one layer plus its activations.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator


def _recorder(keep_hidden: bool):
    """A module that stands in for a decoder layer during the capture pass: it records the
    hidden states and keyword arguments it is called with and returns its input unchanged."""
    import torch

    class Recorder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.hidden: list = []
            self.kwargs: list[dict[str, Any]] = []

        def forward(self, hidden_states, *args, **kwargs):
            if args:
                raise RuntimeError("decoder layers are expected to take keyword arguments after the hidden states")
            if keep_hidden:
                self.hidden.append(hidden_states.detach().clone())
            self.kwargs.append(kwargs)
            return hidden_states

    return Recorder()


def layers_prefix(config) -> str:
    """Name prefix of the decoder layers' tensors, e.g. ``model.layers.``."""
    from apr_core.torch_bridge import meta_model

    skeleton = meta_model(config)
    names = {id(m): n for n, m in skeleton.named_modules()}
    return names[id(skeleton.get_decoder().layers)] + "."


class Layerwise:
    """Layer-at-a-time access to a `Model` for calibration-driven transforms."""

    @classmethod
    def calibrated(cls, model, params: dict, seed: int) -> "Layerwise":
        """An engine over the calibration windows the prune parameters describe."""
        from .calibration import calibration_windows

        windows = calibration_windows(model, params["calibration"], params["calibration_samples"],
                                      params["calibration_seq_len"], seed)
        return cls(model, windows, params["calibration_batch"])

    def __init__(self, model, windows, batch_size: int = 8, dtype: str = "float32"):
        import torch

        from apr_core.torch_bridge import meta_model

        from .common import require_float

        require_float(model)
        self.model = model
        self.dtype = getattr(torch, dtype)
        self.skeleton = meta_model(model.config)
        self.decoder = self.skeleton.get_decoder()
        names = {id(m): n for n, m in self.skeleton.named_modules()}
        self.prefix = names[id(self.decoder.layers)] + "."
        self.num_layers = len(self.decoder.layers)
        self.inputs = self._capture(windows, batch_size)

    # ------------------------------------------------------------------ capture
    def _capture(self, windows, batch_size: int):
        import torch

        layers = self.decoder.layers
        outside = [(n, p) for n, p in self.decoder.named_parameters() if not n.startswith("layers.")]
        decoder_prefix = self.prefix[: -len("layers.")]
        self._assign(self.decoder, {n: self.model.tensor(decoder_prefix + n) for n, _ in outside})
        recorders = [_recorder(keep_hidden=i == 0) for i in range(self.num_layers)]
        originals = list(layers)
        try:
            for i, rec in enumerate(recorders):
                layers[i] = rec
            with torch.inference_mode():
                for start in range(0, windows.shape[0], batch_size):
                    self.decoder(input_ids=windows[start: start + batch_size], use_cache=False)
        finally:
            for i, layer in enumerate(originals):
                layers[i] = layer
            self.decoder.to("meta")
        self.layer_kwargs = [rec.kwargs for rec in recorders]
        return [h.to(self.dtype) for h in recorders[0].hidden]

    # ------------------------------------------------------------------ layers
    def tensor_names(self, i: int) -> list[str]:
        prefix = f"{self.prefix}{i}."
        return [n for n in self.model.names() if n.startswith(prefix)]

    def materialize(self, i: int):
        """Decoder layer ``i`` with float weights loaded from the model."""
        layer = self.decoder.layers[i]
        prefix = f"{self.prefix}{i}."
        self._assign(layer, {n: self.model.tensor(prefix + n) for n, _ in layer.named_parameters()})
        return layer

    def _assign(self, module, tensors: dict) -> None:
        state = {n: t.to(self.dtype).clone() for n, t in tensors.items()}
        module.load_state_dict(state, strict=False, assign=True)

    def run(self, i: int, layer, inputs: list) -> list:
        """Outputs of ``layer`` (standing at position ``i``) for each input batch."""
        import torch

        outs = []
        with torch.inference_mode():
            for h, kwargs in zip(inputs, self.layer_kwargs[i]):
                out = layer(h, **kwargs)
                outs.append(out[0] if isinstance(out, tuple) else out)
        return outs

    def state(self, i: int, layer) -> dict:
        """The layer's tensors under their full model names, in the model's stored dtypes."""
        prefix = f"{self.prefix}{i}."
        out = {}
        for n, t in layer.state_dict().items():
            full = prefix + n
            if full in self.model.tensors:
                out[full] = t.detach().to(self.model.spec(full).dt.torch_dtype())
            else:
                out[full] = t.detach()
        return out

    def release(self, layer) -> None:
        layer.to("meta")

    def linears(self, layer) -> Iterator[tuple[str, Any]]:
        import torch

        for name, mod in layer.named_modules():
            if isinstance(mod, torch.nn.Linear):
                yield name, mod


def with_input_hooks(linears, fn: Callable[[str, Any], None]):
    """Register forward pre-hooks calling ``fn(name, input_2d)`` for each (name, Linear)."""
    handles = []
    for name, mod in linears:
        def hook(_m, args, _name=name):
            x = args[0]
            fn(_name, x.reshape(-1, x.shape[-1]))
        handles.append(mod.register_forward_pre_hook(hook))
    return handles
