"""Sweeps: what makes variants comparable and the comparison itself (``compare``); for DPO / KTO variants, one
shared set of held-out pairs (``preference``).
"""
