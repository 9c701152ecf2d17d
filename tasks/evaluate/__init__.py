"""Stage ``evaluate``: the trained adapter against its base, on held-out data (``stage``); a DPO / KTO adapter
on the held-out pairs: reward accuracy, margin, which response each model prefers (``preference``).
"""
