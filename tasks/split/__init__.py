"""Stage ``split``: a deterministic train/eval split by a salted hash of the record id (``stage``).
"""
