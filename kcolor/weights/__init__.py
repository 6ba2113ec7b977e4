"""Bundled weights: `model.keras` here is the default model of `kcolor colorize`."""
