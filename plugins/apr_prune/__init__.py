"""Pruning plugins for apr: magnitude, wanda, sparsegpt, structured, depth and width.

One module per method, registered together by `apr_prune.plugin` with the prune command family
(`common.PRUNE_KIND`). Calibrated methods run the model one decoder layer at a time through
`apr_core.runtime.layerwise`.
"""
