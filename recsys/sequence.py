"""SASRec's forward pass in numpy: the user vector of a time-ordered history, with no torch (serving, fold-in).

A `SequenceEncoder` holds a trained SASRec's (`recsys.models.sasrec`) transformer weights as float32 arrays and
its small config; item embeddings are not among them: `encode` reads them from the item vectors it is given (the
model's exported item vectors, which are its input and output embeddings), so an engine with added items encodes
histories that hold them. The layers are pre-norm transformer blocks (Kang & McAuley 2018, "Self-attentive
sequential recommendation", with the layer norm before each sub-layer as in later implementations):

    x = item_vectors[history] * scale + positions        (the last item at the last position)
    per layer:  x = x + attention(LN1(x))                (causal: a position sees itself and earlier items)
                x = x + W2 relu(W1 LN2(x) + b1) + b2
    user vector = LN(x)[last position]                   (its dot product with an item vector is the score)

A history keeps its last `max_len` items; a batch is left-padded to its longest history, and padded positions
are masked out of every key, so a history's vector does not depend on the batch it is encoded in.

    encoder = SequenceEncoder.from_state(encoder.state(), encoder.weights)   # as a bundle stores it
    encoder.encode(item_vectors, np.array([3, 17, 5]))                       # (factors,)
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .exceptions import DataValidationError

# A layer's weights, stored as "layer{i}_{name}"; matrices are (in, out): x @ w + b
LAYER_WEIGHTS = ("ln1_w", "ln1_b", "wq", "bq", "wk", "bk", "wv", "bv", "wo", "bo", "ln2_w", "ln2_b",
                 "w1", "b1", "w2", "b2")
CHUNK = 1024  # histories encoded at once: bounds the (chunk, heads, max_len, max_len) attention array


@dataclass
class SequenceEncoder:
    """A SASRec's weights (`weight_names()`: 'pos' (max_len, factors), per layer `LAYER_WEIGHTS`, the final
    norm 'ln_w', 'ln_b') and config. scale: what item vectors are multiplied by on input (sqrt(factors) in
    SASRec); eps: the layer norms' epsilon."""

    max_len: int
    n_layers: int
    n_heads: int
    factors: int
    weights: dict[str, np.ndarray] = field(repr=False)
    scale: float = 1.0
    eps: float = 1e-6

    def __post_init__(self) -> None:
        if self.factors % self.n_heads:
            raise DataValidationError(f"A sequence encoder's n_heads ({self.n_heads}) must divide its factors "
                                      f"({self.factors}).")
        missing = sorted(set(self.weight_names()) - set(self.weights))
        if missing:
            raise DataValidationError(f"The sequence encoder lacks weight(s) {missing[:5]}.")
        self.weights = {name: np.asarray(self.weights[name], np.float32) for name in self.weight_names()}
        if self.weights["pos"].shape != (self.max_len, self.factors):
            raise DataValidationError(f"The sequence encoder's positions have shape {self.weights['pos'].shape}; "
                                      f"its config says ({self.max_len}, {self.factors}).")

    def weight_names(self) -> list[str]:
        return ["pos", *(f"layer{i}_{name}" for i in range(self.n_layers) for name in LAYER_WEIGHTS),
                "ln_w", "ln_b"]

    # ------------------------------------------------------------------------------------------ encoding
    def encode(self, item_vectors: np.ndarray, histories: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """User vectors of time-ordered histories of item indices (oldest first): one history as a 1-D array
        gives (factors,), a sequence of histories (n, factors). An empty history gives zeros."""
        if isinstance(histories, np.ndarray) and histories.ndim == 1:
            return self.encode(item_vectors, [histories])[0]
        item_vectors = np.asarray(item_vectors, np.float32)
        if item_vectors.shape[1] != self.factors:
            raise DataValidationError(f"The sequence encoder has {self.factors} factors; the item vectors have "
                                      f"{item_vectors.shape[1]}.")
        out = np.zeros((len(histories), self.factors), np.float32)
        for start in range(0, len(histories), CHUNK):
            chunk = [np.asarray(h, np.int64)[-self.max_len:] for h in histories[start:start + CHUNK]]
            filled = [r for r, h in enumerate(chunk) if len(h)]
            if filled:
                out[start + np.asarray(filled)] = self._forward(item_vectors, [chunk[r] for r in filled])
        return out

    def _forward(self, item_vectors: np.ndarray, histories: list[np.ndarray]) -> np.ndarray:
        """The last position's output for non-empty histories of at most max_len items."""
        w, length = self.weights, max(len(h) for h in histories)
        batch = np.full((len(histories), length), -1, np.int64)  # left-padded: the last item at the last position
        for r, h in enumerate(histories):
            batch[r, length - len(h):] = h
        real = batch >= 0
        # every history ends at position max_len - 1, as in training; padding reads item 0, masked out below
        x = item_vectors[np.where(real, batch, 0)] * np.float32(self.scale) + w["pos"][self.max_len - length:]
        # a position attends to itself and to earlier positions holding an item (padded rows see only themselves,
        # so their softmax stays finite; no real position ever reads them)
        allowed = np.tril(np.ones((length, length), bool))[None] & (real[:, None, :] | np.eye(length, dtype=bool))
        for i in range(self.n_layers):
            p = f"layer{i}_"
            x = x + self._attention(layer_norm(x, w[p + "ln1_w"], w[p + "ln1_b"], self.eps), allowed, p)
            h = layer_norm(x, w[p + "ln2_w"], w[p + "ln2_b"], self.eps)
            x = x + np.maximum(h @ w[p + "w1"] + w[p + "b1"], 0) @ w[p + "w2"] + w[p + "b2"]
        return layer_norm(x[:, -1], w["ln_w"], w["ln_b"], self.eps)

    def _attention(self, h: np.ndarray, allowed: np.ndarray, p: str) -> np.ndarray:
        """Multi-head scaled dot-product self-attention of h (n, length, factors) within `allowed`."""
        w, (n, length, d) = self.weights, h.shape
        heads = self.n_heads

        def split(z: np.ndarray) -> np.ndarray:  # (n, length, d) -> (n, heads, length, d / heads)
            return z.reshape(n, length, heads, d // heads).transpose(0, 2, 1, 3)
        q, k, v = (split(h @ w[p + m] + w[p + b]) for m, b in (("wq", "bq"), ("wk", "bk"), ("wv", "bv")))
        logits = np.where(allowed[:, None], q @ k.transpose(0, 1, 3, 2) / np.float32(math.sqrt(d // heads)),
                          -np.inf)
        att = np.exp(logits - logits.max(axis=-1, keepdims=True))
        att /= att.sum(axis=-1, keepdims=True)
        return (att @ v).transpose(0, 2, 1, 3).reshape(n, length, d) @ w[p + "wo"] + w[p + "bo"]

    # --------------------------------------------------------------------------------------- persistence
    def state(self) -> dict[str, Any]:
        """The config as JSON-able data (a bundle's manifest `sequence` entry); `weights` holds the arrays."""
        return {"max_len": self.max_len, "n_layers": self.n_layers, "n_heads": self.n_heads,
                "factors": self.factors, "scale": self.scale, "eps": self.eps}

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        """The weights named with `prefix`, as a bundle's arrays file holds them beside the vectors."""
        return {prefix + name: array for name, array in self.weights.items()}

    @classmethod
    def from_state(cls, state: Mapping[str, Any], arrays: Mapping[str, np.ndarray], prefix: str = ""
                   ) -> SequenceEncoder:
        """The encoder of `state()` and its weights: the arrays whose names start with `prefix` (a bundle's
        arrays), the prefix removed."""
        weights = {name[len(prefix):]: a for name, a in arrays.items() if name.startswith(prefix)}
        return cls(**{k: state[k] for k in ("max_len", "n_layers", "n_heads", "factors", "scale", "eps")},
                   weights=weights)


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    """Normalise the last axis to mean 0 and variance 1 (biased, as torch's layer_norm), then scale and shift."""
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + np.float32(eps)) * weight + bias
