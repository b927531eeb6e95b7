"""Run a model one decoder layer at a time over calibration data.

The pattern of the Wanda and SparseGPT code, without holding the model: the
transformers module is built with parameters on the meta device; only the
embedding is materialised to compute layer-0 inputs. Every decoder layer is
replaced by a recorder for that first pass, so the exact arguments the model
passes to each layer (attention masks, rotary tables — per layer type for
Gemma 3's sliding/global mix) are captured once. Then `Layerwise.sweep` walks
the layers: each is materialised from the lazy tensors on the run's device,
handed to the caller (who may gather statistics through input hooks, modify it
or replace it), run to produce the inputs of the next layer, and released.
Peak memory is one layer plus its activations, on the CPU or the GPU alike.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

from .malloc import trim_heap


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
    from ..torch_bridge import meta_model

    skeleton = meta_model(config)
    names = {id(m): n for n, m in skeleton.named_modules()}
    return names[id(skeleton.get_decoder().layers)] + "."


class LayerStep:
    """One layer of a sweep: the materialised ``layer`` at position ``index`` and its ``inputs``
    (one hidden-state tensor per calibration batch).

    The body of a sweep may call `statistics` (run with input hooks on its linears), `forward`
    (run and keep the outputs), modify the layer in place or `replace` it. After the body the
    sweep feeds the kept outputs, or the outputs of the layer as it now is, to the next layer.
    """

    def __init__(self, engine: "Layerwise", index: int, layer, inputs: list) -> None:
        self.engine, self.index, self.layer, self.inputs = engine, index, layer, inputs
        self.outputs: list | None = None

    def forward(self, inputs: list | None = None) -> list:
        """Outputs of the layer; for its own inputs they are kept as what the next layer sees."""
        outs = self.engine.run(self.index, self.layer, self.inputs if inputs is None else inputs)
        if inputs is None:
            self.outputs = outs
        return outs

    def statistics(self, linears, fn: Callable[[str, Any], None]) -> None:
        """Run the layer over its inputs calling ``fn(name, x_2d)`` with each linear's input."""
        handles = with_input_hooks(linears, fn)
        try:
            self.engine.run(self.index, self.layer, self.inputs)
        finally:
            for h in handles:
                h.remove()

    def replace(self, module) -> None:
        """Swap in a new module for this layer (a shrunk copy); the old one is released."""
        self.engine.release(self.layer)
        self.layer = module.to(device=self.engine.device, dtype=self.engine.dtype)
        self.outputs = None

    def linears(self) -> Iterator[tuple[str, Any]]:
        return self.engine.linears(self.layer)

    def state(self) -> dict:
        return self.engine.state(self.index, self.layer)


class Layerwise:
    """Layer-at-a-time access to a `Model` for calibration-driven transforms.

    :param windows: calibration token ids, (windows x seq_len).
    :param batch_size: windows per forward pass.
    :param dtype: compute dtype name (float32 ...).
    :param device: torch device string; the current layer and the activations live there.
    """

    @classmethod
    def calibrated(cls, model, params: dict, context) -> "Layerwise":
        """An engine over the calibration windows a technique's calibration parameters describe
        (``calibration``, ``calibration_samples``, ``calibration_seq_len``, ``calibration_batch``)."""
        from .tokens import calibration_windows

        windows = calibration_windows(model, params["calibration"], params["calibration_samples"],
                                      params["calibration_seq_len"], context.seed)
        return cls(model, windows, params["calibration_batch"], context.compute_dtype(), context.device)

    def __init__(self, model, windows, batch_size: int = 8, dtype: str = "float32", device: str = "cpu"):
        import torch

        from ..torch_bridge import meta_model

        self.model = model
        self.dtype = getattr(torch, dtype)
        self.device = torch.device(device)
        self.skeleton = meta_model(model.config)
        self.decoder = self.skeleton.get_decoder()
        names = {id(m): n for n, m in self.skeleton.named_modules()}
        self.prefix = names[id(self.decoder.layers)] + "."
        self.num_layers = len(self.decoder.layers)
        self.inputs = self._capture(windows, batch_size)
        self.final: list | None = None

    # ------------------------------------------------------------------ capture
    def _capture(self, windows, batch_size: int):
        import torch

        layers = self.decoder.layers
        outside = [(n, p) for n, p in self.decoder.named_parameters() if not n.startswith("layers.")]
        decoder_prefix = self.prefix[: -len("layers.")]
        self._assign(self.decoder, {n: self._float(decoder_prefix + n) for n, _ in outside})
        self._release(decoder_prefix + n for n, _ in outside)
        for name, buf in list(self.decoder.named_buffers()):  # rotary tables
            owner, _, leaf = name.rpartition(".")
            module = self.decoder.get_submodule(owner) if owner else self.decoder
            module._buffers[leaf] = buf.to(self.device)
        recorders = [_recorder(keep_hidden=i == 0) for i in range(self.num_layers)]
        originals = list(layers)
        try:
            for i, rec in enumerate(recorders):
                layers[i] = rec
            with torch.inference_mode():
                for start in range(0, windows.shape[0], batch_size):
                    batch = windows[start: start + batch_size].to(self.device)
                    self.decoder(input_ids=batch, use_cache=False)
        finally:
            for i, layer in enumerate(originals):
                layers[i] = layer
            self.decoder.to("meta")
        self.layer_kwargs = [rec.kwargs for rec in recorders]
        return [h.to(self.dtype) for h in recorders[0].hidden]

    # ------------------------------------------------------------------ the sweep
    def sweep(self, progress=None, desc: str = "layers", inputs: list | None = None) -> Iterator[LayerStep]:
        """Yield a `LayerStep` per decoder layer, in order, starting from the captured layer-0
        inputs (or ``inputs``); after the last layer ``self.final`` holds its outputs."""
        hidden = self.inputs if inputs is None else inputs
        order = range(self.num_layers)
        if progress is not None:
            order = progress(order, desc=desc, total=self.num_layers)
        for i in order:
            step = LayerStep(self, i, self.materialize(i), hidden)
            yield step
            hidden = step.outputs if step.outputs is not None else self.run(i, step.layer, hidden)
            self.release(step.layer)
            del step
            trim_heap()  # each layer frees tens of MB; keep RSS from creeping up
        self.final = hidden

    # ------------------------------------------------------------------ layers
    def materialize(self, i: int):
        """Decoder layer ``i`` with float weights loaded from the model, on the device."""
        layer = self.decoder.layers[i]
        prefix = f"{self.prefix}{i}."
        names = [n for n, _ in layer.named_parameters()]
        self._assign(layer, {n: self._float(prefix + n) for n in names})
        self._release(prefix + n for n in names)
        return layer

    def _release(self, names) -> None:
        """Hand the source pages of tensors just copied onto the device back (see
        `LazyTensor.release`): otherwise a sweep leaves the whole mapped model resident."""
        for name in names:
            self.model.tensors[name].release()

    def _float(self, name: str):
        """A weight's values (stored blocks dequantized: a quantized model calibrates as it runs)."""
        from ..quant.convert import float_tensor

        return float_tensor(self.model.tensors[name])

    def _assign(self, module, tensors: dict) -> None:
        state = {n: t.to(device=self.device, dtype=self.dtype, copy=True) for n, t in tensors.items()}
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
        """The layer's tensors under their full model names, on the CPU in the model's stored dtypes."""
        prefix = f"{self.prefix}{i}."
        out = {}
        for n, t in layer.state_dict().items():
            full = prefix + n
            dtype = self.model.spec(full).dt.torch_dtype() if full in self.model.tensors else t.dtype
            out[full] = t.detach().to(device="cpu", dtype=dtype)
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
