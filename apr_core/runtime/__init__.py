"""The shared runtime of techniques that run the network: devices, token data, loss, layer sweeps,
checkpoints and the training loop.

Everything here is technique-agnostic: prune calibration, perplexity, code generation,
fine-tuning and distillation build on the same pieces, so a fix to (say) how token windows are
cut or how the next-token loss is chunked reaches every technique at once.
"""
