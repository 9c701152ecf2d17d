"""Sweeps: what makes variants comparable and the comparison itself (``compare``).
"""
