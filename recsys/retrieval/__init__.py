"""Retrieval: top-k item indices for query vectors (numpy and annoy only, never torch).

    topk / best_k          the one top-k selection (topk.py)
    Retriever              exact (float32, or int8 first for one query) or indexed search with exclusions and
                           allow-lists, choosing per call which is faster (retriever.py)
    AnnIndex, CellIndex    norm-ranged Annoy forests (forest.py) and k-means cells (cells.py), one interface
    tune_index, build_indexes, load_index
                           index settings measured on sampled queries; the indexes a bundle keeps (calibrate.py)
    Int8Items              the int8 copy that makes one query's exact scan read a quarter of the bytes (int8.py)

`recsys.engine.Engine` adds ids, filters, fold-in and the popularity fallback on top of a `Retriever`.
"""
from .calibrate import (
                        INDEX_PREFIX,
                        IndexStats,
                        build_indexes,
                        describe,
                        load_index,
                        measure_exact,
                        recall_at_k,
                        time_per_query,
                        tune_index,
)
from .cells import CellIndex, kmeans, nearest_centroid
from .exact import EXACT_BLOCK, exact_topk, normalise
from .forest import AnnIndex, norm_ranges
from .int8 import Int8Items
from .retriever import SEARCH_MODES, Retriever, combine_exclusions
from .topk import best_k, topk

__all__ = [
                        "EXACT_BLOCK",
                        "INDEX_PREFIX",
                        "SEARCH_MODES",
                        "AnnIndex",
                        "CellIndex",
                        "IndexStats",
                        "Int8Items",
                        "Retriever",
                        "best_k",
                        "build_indexes",
                        "combine_exclusions",
                        "describe",
                        "exact_topk",
                        "kmeans",
                        "load_index",
                        "measure_exact",
                        "nearest_centroid",
                        "norm_ranges",
                        "normalise",
                        "recall_at_k",
                        "time_per_query",
                        "topk",
                        "tune_index",
]
