"""Pruning plugins for apr: magnitude, wanda, sparsegpt, structured, depth and width.

Each method is its own module and entry point; they share the prune command
family (`common.PRUNE_KIND`), calibration data (`calibration`) and the
layer-by-layer engine (`layerwise`).
"""
