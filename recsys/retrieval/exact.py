"""Exact scoring helpers shared by the retrievers and the index builders."""
from __future__ import annotations

import numpy as np

from .topk import topk

EXACT_BLOCK = 1 << 25  # floats of scores per exact-scoring block (128 MiB)


def normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), float32."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.where(norms > 0, norms, 1)).astype(np.float32)


def exact_topk(queries: np.ndarray, vectors: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k item indices by inner product, in blocks of queries that bound the score matrix's memory."""
    k = min(k, len(vectors))
    out = np.empty((len(queries), k), np.int64)
    step = max(1, EXACT_BLOCK // max(len(vectors), 1))
    for s in range(0, len(queries), step):
        out[s:s + step] = topk(queries[s:s + step] @ vectors.T, k)[0]
    return out
