"""Model bundles: a directory of safetensors arrays, id maps, item metadata and a checksummed manifest.

    bundle/ manifest.json   format version, recsys version, model config, dimensions, metrics, sha256 of files
            arrays.safetensors   user_vectors, item_vectors, seen_* (training interactions as CSR)
            users.json, items.json   external ids in index order
            items.parquet   item metadata (title, genres, ...) when known

A bundle is written into a temporary directory beside its destination and renamed into place, so a crash
never leaves a half-written bundle. It is never modified afterwards: a new model is a new directory, and a
`current` symlink in the models root moves atomically (`publish`). Never pickle.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from safetensors.numpy import load_file, save_file

from . import __version__
from .data import IdMap
from .exceptions import BundleError, RecsysError
from .foldin import FoldIn

log = logging.getLogger("recsys")

FORMAT_VERSION = 1
ITEM_TOWER_WEIGHTS = "item_tower_weights"  # the array of a two-tower's feature embeddings
SEQUENCE_PREFIX = "sequence."  # the arrays of a sequential model's encoder (`recsys.sequence`), by weight name
MANIFEST = "manifest.json"
ARRAYS = "arrays.safetensors"
CURRENT = "current"


@dataclass
class Manifest:
    """The typed contents of a bundle's manifest.json: what the model is, how it folds users in, what it scored.

    `write_bundle` fills the bookkeeping fields (format and recsys versions, creation time, dimensions, arrays,
    files with their sha256); `verify` reads them back and refuses another format version. JSON keys equal
    the field names, except `model_class` and `params`, stored as {"model": {"class": ..., "params": ...}}.

    >>> m = Manifest(model_class="popularity", params={}, factors=1, foldin=FoldIn("constant"))
    >>> Manifest.from_dict(m.to_dict()).foldin.method
    'constant'
    """

    model_class: str
    params: dict[str, Any]
    factors: int
    foldin: FoldIn = field(default_factory=FoldIn)
    similarity: str = "cosine"
    similarity_dims: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)     # held-out metrics of the evaluated fit
    evaluation: dict[str, Any] = field(default_factory=dict)    # split protocol, baselines' metrics
    data: dict[str, Any] = field(default_factory=dict)          # interactions, users, items trained on
    training: dict[str, Any] = field(default_factory=dict)      # best epoch, history, device, ...
    tuning: dict[str, Any] | None = None                        # the search summary, when tuned
    item_tower: dict[str, Any] | None = None                    # a two-tower's featurizer (`recsys.features`)
    sequence: dict[str, Any] | None = None                      # a SASRec's encoder config (`recsys.sequence`)
    index: dict[str, Any] = field(default_factory=dict)         # kept Annoy indexes: prefix, config, stats
    index_measured: dict[str, Any] = field(default_factory=dict)  # every index tuned, kept or not
    n_users: int = 0
    n_items: int = 0
    format_version: int = FORMAT_VERSION
    recsys_version: str = __version__
    created_at: str = ""
    arrays: dict[str, Any] = field(default_factory=dict)        # name -> shape, dtype
    files: dict[str, Any] = field(default_factory=dict)         # name -> sha256, bytes

    def to_dict(self) -> dict[str, Any]:
        out = {"format_version": self.format_version, "recsys_version": self.recsys_version,
               "created_at": self.created_at, "n_users": self.n_users, "n_items": self.n_items,
               "model": {"class": self.model_class, "params": self.params}}
        for f in fields(self):
            if f.name not in out and f.name not in ("model_class", "params"):
                out[f.name] = getattr(self, f.name)
        out["foldin"] = self.foldin.to_dict()
        for optional in ("tuning", "item_tower", "sequence"):
            if out[optional] is None:
                del out[optional]
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str = "") -> Manifest:
        """From manifest.json's object; a format version other than this recsys's is refused."""
        version = raw.get("format_version")
        if version != FORMAT_VERSION:
            raise BundleError(f"Bundle {where!r} has format_version {version!r}; this recsys ({__version__}) "
                              f"reads format {FORMAT_VERSION}. Retrain with this version.")
        known = {f.name for f in fields(cls)} - {"model_class", "params"}
        try:
            model = raw["model"]
            return cls(model_class=model["class"], params=model["params"],
                       **{k: v for k, v in raw.items() if k in known and k != "foldin"},
                       foldin=FoldIn.from_dict(raw.get("foldin")))
        except (KeyError, TypeError, RecsysError) as e:
            raise BundleError(f"The manifest of bundle {where!r} is malformed ({type(e).__name__}: {e}). "
                              "Retrain or restore the bundle.") from e


@dataclass
class Bundle:
    path: Path
    manifest: Manifest
    arrays: dict[str, np.ndarray]
    users: IdMap
    items: IdMap
    item_metadata: pd.DataFrame | None

    def seen(self) -> sp.csr_matrix:
        a = self.arrays
        return sp.csr_matrix((a["seen_data"], a["seen_indices"], a["seen_indptr"]),
                             shape=(len(self.users), len(self.items)))


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def csr_arrays(matrix: sp.csr_matrix, prefix: str = "seen") -> dict[str, np.ndarray]:
    m = matrix.tocsr()
    return {f"{prefix}_data": m.data.astype(np.float32), f"{prefix}_indices": m.indices.astype(np.int32),
            f"{prefix}_indptr": m.indptr.astype(np.int64)}


def write_bundle(path: str | Path, *, arrays: dict[str, np.ndarray], users: IdMap, items: IdMap,
                 manifest: Manifest, item_metadata: pd.DataFrame | None = None,
                 files: dict[str, Callable[[Path], None]] | None = None) -> Path:
    """Write a new bundle at `path` (which must not exist) atomically; returns the path.

    files: extra files (e.g. Annoy indexes) as {name: writer}, each writer called with its target path.
    """
    path = Path(path)
    if path.exists():
        raise BundleError(f"Bundle directory {str(path)!r} already exists; bundles are never modified in "
                          "place. Choose a new directory (or a models root: `save` picks a new version name).")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp / ARRAYS))
        (tmp / "users.json").write_text(users.to_json())
        (tmp / "items.json").write_text(items.to_json())
        if item_metadata is not None:
            _metadata_for_parquet(item_metadata).to_parquet(tmp / "items.parquet", index=False)
        for name, writer in (files or {}).items():
            writer(tmp / name)
        files = {}
        for f in sorted(tmp.iterdir()):
            files[f.name] = {"sha256": sha256_file(f), "bytes": f.stat().st_size}
        full = dataclasses.replace(
            manifest, format_version=FORMAT_VERSION, recsys_version=__version__,
            created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            n_users=len(users), n_items=len(items),
            arrays={k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in arrays.items()}, files=files)
        (tmp / MANIFEST).write_text(json.dumps(full.to_dict(), indent=2, sort_keys=False, default=_json_default))
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        os.rename(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("Wrote bundle %s", path)
    return path


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"Cannot store {type(obj).__name__} in a bundle manifest")


def _metadata_for_parquet(meta: pd.DataFrame) -> pd.DataFrame:
    out = meta.copy()
    for col in out.columns:
        if out[col].dtype == object:
            sample = out[col].dropna()
            if len(sample) and isinstance(sample.iloc[0], (list, tuple, np.ndarray)):
                out[col] = out[col].map(lambda v: list(v) if isinstance(v, (list, tuple, np.ndarray)) else [])
            else:
                out[col] = out[col].map(lambda v: None if v is None or (isinstance(v, float) and np.isnan(v))
                                        else str(v))
    return out


def resolve(path: str | Path) -> Path:
    """A bundle directory, or a models root whose `current` pointer names one."""
    path = Path(path)
    if (path / MANIFEST).is_file():
        return path
    if (path / CURRENT).exists():
        return (path / CURRENT).resolve()
    if not path.exists():
        raise BundleError(f"No bundle at {str(path)!r}: the directory does not exist. Train one with "
                          "`recsys train --out DIR` and pass that DIR.")
    raise BundleError(f"{str(path)!r} is not a bundle: it has no {MANIFEST} and no {CURRENT!r} pointer.")


def verify(path: str | Path) -> Manifest:
    """Check the manifest and the sha256 of every file it lists; returns the manifest."""
    path = resolve(path)
    try:
        raw = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError) as e:
        raise BundleError(f"Cannot read {MANIFEST} in bundle {str(path)!r}: {e}. The bundle is corrupt; "
                          "retrain or restore it.") from e
    if not isinstance(raw, dict):
        raise BundleError(f"{MANIFEST} in bundle {str(path)!r} is not a JSON object. Retrain or restore it.")
    manifest = Manifest.from_dict(raw, str(path))
    for name, info in manifest.files.items():
        if "/" in name or name.startswith("."):
            raise BundleError(f"Bundle manifest lists an unsafe file name {name!r} in {str(path)!r}.")
        f = path / name
        if not f.is_file():
            raise BundleError(f"Bundle {str(path)!r} is missing {name}, listed in its manifest.")
        actual = sha256_file(f)
        if actual != info["sha256"]:
            raise BundleError(f"Checksum mismatch for {name} in bundle {str(path)!r}: expected sha256 "
                              f"{info['sha256'][:16]}..., got {actual[:16]}.... The file is corrupt; retrain "
                              "or restore the bundle.")
    return manifest


def read_bundle(path: str | Path) -> Bundle:
    """Load and verify a bundle (every checksum, every array shape against the manifest)."""
    path = resolve(path)
    manifest = verify(path)
    arrays = load_file(str(path / ARRAYS))
    for name, info in manifest.arrays.items():
        if name not in arrays or list(arrays[name].shape) != info["shape"]:
            raise BundleError(f"{ARRAYS} in bundle {str(path)!r} does not match its manifest: array {name!r} "
                              f"should have shape {info['shape']}.")
    users = IdMap.from_json((path / "users.json").read_text())
    items = IdMap.from_json((path / "items.json").read_text())
    if len(users) != manifest.n_users or len(items) != manifest.n_items:
        raise BundleError(f"users.json/items.json in bundle {str(path)!r} do not match the manifest's "
                          f"n_users={manifest.n_users} / n_items={manifest.n_items}.")
    meta = pd.read_parquet(path / "items.parquet") if (path / "items.parquet").is_file() else None
    return Bundle(path, manifest, arrays, users, items, meta)


def new_version_path(root: str | Path, tag: str) -> Path:
    """A fresh directory name under `root`: <UTC time>-<tag>, never an existing one."""
    root = Path(root)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    candidate, n = root / f"{stamp}-{tag}", 1
    while candidate.exists():
        n += 1
        candidate = root / f"{stamp}-{tag}-{n}"
    return candidate


def publish(root: str | Path, bundle: str | Path) -> Path:
    """Point `root/current` at `bundle` (verified first) with an atomic symlink swap."""
    root, bundle = Path(root), Path(bundle)
    verify(bundle)
    target = os.path.relpath(bundle.resolve(), root.resolve())
    tmp = root / f".{CURRENT}.tmp-{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, root / CURRENT)
    _fsync_dir(root)
    log.info("Published %s as %s", bundle, root / CURRENT)
    return root / CURRENT
