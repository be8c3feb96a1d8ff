"""Text ids: stable 64-bit ids derived from content (the same text gets the same id in every run)."""

from __future__ import annotations

import hashlib

import numpy as np


def text_id(text: str) -> int:
    """The first 8 bytes of BLAKE2b over the UTF-8 text, as a signed int64 (FAISS and Arrow's native id type)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little", signed=True)


def text_ids(texts) -> np.ndarray:
    return np.fromiter((text_id(t) for t in texts), dtype=np.int64, count=len(texts))
