"""SASRec: the contract, the numpy encoder against the torch network, order that a set-based model cannot see,
bundles served without torch, time-ordered histories and training windows, parameters."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from contract import RecommenderContract

from recsys.data import from_arrays, temporal_split, user_histories
from recsys.engine import load_engine
from recsys.exceptions import DataValidationError
from recsys.foldin import FoldIn
from recsys.models import IALS, Blend, Popularity, load
from recsys.models import sasrec as sasrec_module
from recsys.models.sasrec import SASRec, SASRecNetwork, recent_items, training_windows
from recsys.sequence import SequenceEncoder

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def fast_sasrec(**overrides) -> SASRec:
    params = {"factors": 16, "n_layers": 1, "max_len": 20, "epochs": 20, "lr": 0.01, "batch_size": 32,
              "progress": False, "device": "cpu", "seed": 0}
    return SASRec(**{**params, **overrides})


class TestSASRec(RecommenderContract):
    def make_model(self):
        return fast_sasrec()


def ordered_log(seed: int = 0, n_users: int = 200, n_noise: int = 30):
    """A timed log where B always directly follows A. Half the users hold A, B and C among six random items (C
    anywhere but right after A); the other half hold B (anywhere) among six random items, and neither A nor C.
    As sets, C is the item that comes with A (B is everywhere); in time, B is what comes next after A."""
    rng = np.random.default_rng(seed)
    users, items, times = [], [], []
    for u in range(n_users):
        seq = [f"n{j}" for j in rng.choice(n_noise, 6, replace=False)]
        if u % 2 == 0:
            at = int(rng.integers(len(seq) + 1))
            seq[at:at] = ["A", "B"]
            c = at + 1  # never right after A
            while c == at + 1:
                c = int(rng.integers(len(seq) + 1))
            seq.insert(c, "C")
        else:
            seq.insert(int(rng.integers(len(seq) + 1)), "B")
        users += [f"u{u}"] * len(seq)
        items += seq
        times += list(1000 * u + np.arange(len(seq)))
    return from_arrays(np.array(users), np.array(items), timestamp=np.array(times))


@pytest.fixture(scope="module")
def ordered():
    log = ordered_log()
    return log, fast_sasrec(max_len=10, epochs=30).fit(log)


# ------------------------------------------------------------------------------------ numpy == torch
def test_numpy_encoder_equals_the_torch_network():
    """Tolerance 1e-4 absolute on outputs of unit scale (layer-normed), float32 both sides."""
    gen = torch.Generator().manual_seed(3)
    net = SASRecNetwork(n_items=40, factors=8, n_layers=2, n_heads=2, max_len=6, dropout=0.5, gen=gen).eval()
    with torch.no_grad():  # layer norms and biases away from their 1 / 0 start, so that each one is tested
        for p in net.weights.values():
            if p.dim() == 1:
                p.add_(0.3 * torch.randn(p.shape, generator=gen))
    rng = np.random.default_rng(0)
    histories = [rng.integers(0, 40, n) for n in (1, 2, 5, 6, 7, 15)]  # shorter than, equal to, longer than max_len
    histories.append(np.array([4, 4, 9, 4]))  # repeats are kept in order
    encoder, items = net.encoder(), net.item_vectors()
    batch = encoder.encode(items, histories)
    for h, row in zip(histories, batch):
        recent = torch.as_tensor(recent_items(np.array([0, len(h)]), h, 6, pad=40)).long()
        with torch.no_grad():
            expected = net(recent)[0, -1].numpy()  # padded to max_len: padding must not matter
        np.testing.assert_allclose(row, expected, atol=1e-4)
        np.testing.assert_allclose(encoder.encode(items, h), row, atol=1e-5)  # alone or in a batch
    assert not np.allclose(batch[2], encoder.encode(items, histories[2][::-1]))  # order matters
    np.testing.assert_array_equal(encoder.encode(items, np.array([], np.int64)), np.zeros(8, np.float32))
    clone = SequenceEncoder.from_state(encoder.state(), encoder.arrays("sequence."), "sequence.")
    np.testing.assert_array_equal(clone.encode(items, histories), batch)


# ---------------------------------------------------------------------------------------- order
def test_the_next_item_after_a_follows_the_order_that_ials_cannot_see(ordered):
    log, model = ordered
    history = ["n1", "n2", "n3", "A"]
    ids, _ = model.recommend_for_history(history, k=3)
    assert ids[0] == "B", list(ids)
    ials, _ = IALS(factors=16, progress=False, seed=0).fit(log).recommend_for_history(history, k=3)
    assert ials[0] != "B", list(ials)  # as a set, C goes with A (measured: C first over 6 seeds)
    # each user of A, folded in from their own history up to A: B next
    indptr, items = user_histories(log)
    a, b = log.items.index("A"), log.items.index("B")
    histories = [items[indptr[u]:indptr[u + 1]] for u in range(log.n_users)]
    prefixes = [h[:np.flatnonzero(h == a)[0] + 1] for h in histories if a in h]
    top = [model.engine_.history_indices(p, k=1, hide=p)[0][0] for p in prefixes]
    assert len(prefixes) == 100 and np.mean(np.equal(top, b)) >= 0.95, np.mean(np.equal(top, b))


def test_sampled_softmax_with_popularity_negatives_learns_the_order_too():
    log = ordered_log(seed=1)
    model = fast_sasrec(max_len=10, epochs=30, loss="sampled", n_negatives=16, sampling="popularity").fit(log)
    assert model.recommend_for_history(["n4", "A"], k=1)[0][0] == "B"


def test_loss_auto_takes_the_full_softmax_unless_an_epoch_costs_more_than_softmax_work(monkeypatch):
    log = ordered_log(seed=2)
    assert fast_sasrec(epochs=1).fit(log).exported_.extra["loss"] == "softmax"
    monkeypatch.setattr(sasrec_module, "SOFTMAX_WORK", 0.0)
    assert fast_sasrec(epochs=1).fit(log).exported_.extra["loss"] == "sampled"
    assert fast_sasrec(epochs=1, loss="softmax").fit(log).exported_.extra["loss"] == "softmax"


# ------------------------------------------------------------------------------------ bundles
def test_round_trip_and_serving_without_torch(ordered, tmp_path):
    log, model = ordered
    path = model.save(tmp_path / "bundle")
    loaded = load(path)
    assert loaded.exported_.foldin == FoldIn("sequence")
    users = list(log.users.ids[:20])
    np.testing.assert_array_equal(loaded.recommend(users, k=5)[0], model.recommend(users, k=5)[0])
    history = ["n5", "C", "n7", "A"]
    index = log.items.to_index(history)
    np.testing.assert_array_equal(loaded.engine_.fold_in(index), model.engine_.fold_in(index))
    expected = list(model.recommend_for_history(history, k=5)[0])
    assert list(loaded.recommend_for_history(history, k=5)[0]) == expected
    code = (f"import sys\nfrom recsys.engine import load_engine\nengine, _ = load_engine({str(path)!r})\n"
            f"ids, _ = engine.recommend_for_history({history!r}, k=5)\n"
            "assert 'torch' not in sys.modules, 'torch imported'\nprint(' '.join(ids))\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == expected


def test_the_encoder_is_checked_when_an_engine_is_made(ordered, tmp_path):
    _, model = ordered
    engine = model.engine_
    with pytest.raises(DataValidationError, match="needs one sequence encoder of 16 factors"):
        type(engine)(engine.item_vectors, engine.user_vectors, engine.users, engine.items, foldin=engine.foldin)
    engine, bundle = load_engine(model.save(tmp_path / "bundle"))
    assert bundle.manifest.sequence == model.engine_.sequence.state()
    assert "sequence.layer0_wq" in bundle.manifest.arrays


def test_a_blend_folds_its_sasrec_part_in_with_the_encoder(ordered):
    log, model = ordered
    blend = Blend.from_fitted([model, Popularity().fit(log)], [0.8, 0.2], log)
    index = log.items.to_index(["n1", "A"])
    vector = blend.engine_.fold_in(index)
    part = blend.exported_.foldin.parts[0]
    np.testing.assert_allclose(vector[:16], part.user_scale * model.engine_.fold_in(index), rtol=1e-6)


# ------------------------------------------------------------------------------------ training
def test_early_stopping_on_validation_ndcg(synthetic_split):
    train, _ = synthetic_split
    fit_part, valid = temporal_split(train, 0.2)
    model = fast_sasrec(epochs=6, patience=2).fit(fit_part, valid)
    extra = model.exported_.extra
    assert extra["best_epoch"] == max(extra["history"], key=lambda h: h["val_ndcg@10"])["epoch"]
    assert extra["device"] == "cpu" and extra["windows"] > 0


def test_user_histories_order_by_time_ties_by_a_seeded_draw_untimed_by_rows():
    inter = from_arrays(np.array(["u", "u", "u", "v", "v"]), np.array(["c", "a", "b", "a", "b"]),
                        timestamp=np.array([5, 9, 5, 1, 2]))
    indptr, items = user_histories(inter)
    assert indptr.tolist() == [0, 3, 5]
    assert inter.items.ids[items[2]] == "a" and set(inter.items.ids[items[:2]]) == {"b", "c"}
    assert inter.items.ids[items[3:]].tolist() == ["a", "b"]
    orders = {tuple(user_histories(inter, seed)[1][:2]) for seed in range(20)}
    assert len(orders) == 2, "ties at t=5 in a seeded random order, not by id"
    untimed = from_arrays(np.array(["u", "u"]), np.array(["b", "a"]))
    assert untimed.items.ids[user_histories(untimed)[1]].tolist() == ["a", "b"]  # stored row order


def test_training_windows_give_every_next_item_once():
    items = np.array([1, 2, 3, 4, 5, 6, 7, 9, 8])  # user 0: 1..7 (7 items); user 1: 9, 8; user 2: none
    indptr = np.array([0, 7, 9, 9])
    inputs, targets = training_windows(indptr, items, max_len=4, pad=10)
    # windows from the end of each history: its last window first; inputs left-padded
    assert inputs.tolist() == [[3, 4, 5, 6], [10, 10, 1, 2], [10, 10, 10, 9]]
    assert targets.tolist() == [[4, 5, 6, 7], [-1, -1, 2, 3], [-1, -1, -1, 8]]
    assert recent_items(indptr, items, 4, pad=10).tolist() == [[4, 5, 6, 7], [10, 10, 9, 8], [10] * 4]


# ---------------------------------------------------------------------------------------- parameters
@pytest.mark.parametrize("param, value, expected", [
    ("factors", 0, "The 'factors' parameter of SASRec must be an int >= 1. Got 0."),
    ("n_layers", 0, "The 'n_layers' parameter of SASRec must be an int >= 1. Got 0."),
    ("max_len", 2.5, "The 'max_len' parameter of SASRec must be an int >= 1. Got 2.5."),
    ("dropout", 1.5, "The 'dropout' parameter of SASRec must be a float >= 0 and <= 1. Got 1.5."),
    ("lr", 0.0, "The 'lr' parameter of SASRec must be a float > 0. Got 0.0."),
    ("loss", "bpr", "The 'loss' parameter of SASRec must be one of 'auto', 'softmax', 'sampled'. Got 'bpr'."),
    ("sampling", "zipf", "must be one of 'uniform', 'popularity'. Got 'zipf'."),
    ("n_negatives", 0, "The 'n_negatives' parameter of SASRec must be an int >= 1. Got 0."),
    ("n_heads", 3, "The 'n_heads' parameter of SASRec must divide 'factors' (16). Got 3."),
    ("device", "tpu", "must be one of 'auto', 'cpu', 'cuda', 'mps'. Got 'tpu'."),
])
def test_invalid_params_are_named(synthetic, param, value, expected):
    with pytest.raises(DataValidationError) as err:
        fast_sasrec(**{param: value}).fit(synthetic)
    assert expected in str(err.value)


def test_a_known_user_with_new_feedback_is_folded_in_in_time_order(ordered, tmp_path):
    """The bundle keeps each user's seen items in time order, so training history + feedback is one sequence."""
    log, model = ordered
    indptr, in_time = user_histories(log)
    u = next(u for u in range(log.n_users) if np.any(np.diff(in_time[indptr[u]:indptr[u + 1]]) < 0))  # not by index
    items, _ = model.engine_.folded_history(log.users.ids[u], [("n1", 1.0)])
    np.testing.assert_array_equal(items[:-1], in_time[indptr[u]:indptr[u + 1]])
    assert model.engine_.items.ids[items[-1]] == "n1"
    loaded = load(model.save(tmp_path / "bundle"))  # the order survives the bundle
    np.testing.assert_array_equal(loaded.engine_.folded_history(log.users.ids[u], [])[0], items[:-1])


def test_the_service_answers_sessions_and_feedback_in_the_order_of_events(ordered, tmp_path):
    """The session endpoint and a new user's stored feedback are sequences: after ... A, B comes first."""
    from server_support import AUTH, KEY, events

    from server import create_app

    _, model = ordered
    app = create_app({"BUNDLE": str(model.save(tmp_path / "bundle")), "TESTING": True, "API_KEYS": [KEY],
                      "FEEDBACK_DB_URL": f"sqlite:///{tmp_path / 'feedback.db'}"})
    client = app.test_client()

    def session(items):
        body = client.post("/v1/sessions/recommendations", json={"items": items, "k": 3}).get_json()
        return {item["id"]: item["score"] for item in body["items"]}
    after_a, earlier = session(["n1", "n2", "A"]), session(["A", "n1", "n2"])
    assert next(iter(after_a)) == "B"
    assert after_a["B"] > earlier.get("B", -np.inf) + 1, "the same set in another order: B is less likely next"
    assert client.post("/v1/feedback", json=events(("walk-in", "n1"), ("walk-in", "n2"), ("walk-in", "A")),
                       headers=AUTH).status_code == 201
    answer = client.get("/v1/users/walk-in/recommendations?k=3").get_json()
    assert answer["items"][0]["id"] == "B" and not answer["fallback"]
