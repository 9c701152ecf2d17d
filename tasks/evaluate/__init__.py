"""Stage ``evaluate``: the trained adapter against its base, on held-out data (``stage``).
"""
