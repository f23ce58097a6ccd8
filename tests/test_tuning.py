"""recsys.tuning: Optuna search on a validation split carved from the training data."""
from __future__ import annotations

import pytest

from recsys import pipeline, tuning
from recsys.evaluation import evaluate
from recsys.exceptions import DataValidationError
from recsys.models import EASE, IALS, make_model
from recsys.params import Choice, Float, Int, Range


def test_first_trial_is_the_defaults_and_best_is_never_worse(synthetic_split):
    train, _ = synthetic_split
    result = tuning.tune(train, "ease", n_trials=4, budget=None)
    assert result.trials[0]["l2"] == EASE().l2
    assert result.best_value == max(t["value"] for t in result.trials) >= result.trials[0]["value"]
    assert result.n_trials == 4 and result.metric == "ndcg@10"
    assert 1.0 <= result.best_params["l2"] <= 1e5


def test_the_value_is_measured_on_a_split_carved_from_train(synthetic_split):
    train, _ = synthetic_split
    result = tuning.tune(train, "ease", n_trials=1, budget=None, validation_fraction=0.25)
    fit_part, valid = pipeline.holdout(train, 0.25)
    expected = evaluate(EASE(l2=result.best_params["l2"]).fit(fit_part), valid)["ndcg@10"]
    assert result.best_value == pytest.approx(expected)


def test_same_seed_same_search(synthetic_split):
    train, _ = synthetic_split
    a = tuning.tune(train, "itemknn", n_trials=5, budget=None, seed=3)
    b = tuning.tune(train, "itemknn", n_trials=5, budget=None, seed=3)
    assert [t["neighbours"] for t in a.trials] == [t["neighbours"] for t in b.trials]
    assert a.best_params == b.best_params


def test_early_stopping_models_report_the_chosen_epochs(synthetic_split):
    train, _ = synthetic_split
    fixed = {"factors": 8, "epochs": 12, "patience": 2, "progress": False, "device": "cpu"}
    result = tuning.tune(train, "mf", n_trials=2, budget=None, fixed=fixed)
    assert 1 <= result.best_params["epochs"] <= 12
    assert result.best_params["factors"] == 8, "fixed parameters win over the search space"
    assert all("factors" not in t for t in result.trials)


def test_a_best_value_on_an_edge_is_reported(synthetic_split, caplog):
    train, _ = synthetic_split
    # the defaults (l2=500, tried first) sit on the low edge; stronger l2 only gets worse on this log
    space = {"l2": Float(500.0, 1e5, log=True)}
    result = tuning.tune(train, "ease", n_trials=6, budget=None, space=space)
    assert result.edges == {"l2": "low"}
    assert "widen it and tune again" in caplog.text
    limited = tuning.tune(train, "ease", n_trials=6, budget=None,
                        space={"l2": Float(500.0, 1e5, log=True, limits=("low",))})
    assert limited.edges == {}


def test_range_edges_and_choices():
    r = Range(1.0, 1000.0, log=True)
    assert r.at_edge(1.1) == "low" and r.at_edge(900.0) == "high" and r.at_edge(31.6) is None
    assert Int(0, 10).at_edge(5) is None and Int(0, 10).at_edge(10) == "high"
    assert str(Float(0.5, 2.0, log=True)) == "[0.5, 2] (log)"
    assert Choice(("a", "b")).values == ("a", "b")


def test_widen_pushes_only_the_edge_that_was_hit():
    space = {"a": Float(0.1, 10.0, log=True), "b": Int(2, 64, log=True), "c": Float(0.0, 1.0, limits=("low",)),
             "d": Float(0.0, 1.0), "e": Choice((1, 2))}
    wide = tuning.widen(space, {"a": "high", "b": "low", "c": "low", "d": "high"})
    assert (wide["a"].low, wide["a"].high) == (0.1, 100.0)
    assert (wide["b"].low, wide["b"].high, wide["b"].kind) == (1, 64, int)
    assert wide["c"] == space["c"], "a parameter's own limit never moves"
    assert (wide["d"].low, wide["d"].high) == (0.0, 2.0)
    assert wide["e"] == space["e"]


def test_nothing_to_search_is_one_trial(synthetic_split):
    train, _ = synthetic_split
    result = tuning.tune(train, "popularity", budget=60.0)
    assert result.n_trials == 1 and result.seconds < 30, "an empty space does not spin until the budget ends"


def test_budget_is_respected(synthetic_split):
    train, _ = synthetic_split
    result = tuning.tune(train, "itemknn", budget=2.0)
    assert result.seconds < 2.0 + 5.0, "stops after the trial running at the deadline"
    assert result.n_trials >= 1


@pytest.mark.parametrize("kwargs, message", [
    ({"budget": None}, "needs a time budget or a number of trials"),
    ({"budget": 0}, "budget must be > 0 seconds. Got 0"),
    ({"model": "nope", "n_trials": 1}, "Unknown model 'nope'"),
    ({"model": "ease", "n_trials": 1, "space": None, "fixed": {"l2": -1.0}},
     "ease cannot be tuned on this data: The 'l2' parameter of EASE must be a float > 0. Got -1.0."),
])
def test_errors_are_named(synthetic_split, kwargs, message):
    train, _ = synthetic_split
    kwargs = {"model": "ease", **kwargs}
    with pytest.raises(DataValidationError, match=message):
        tuning.tune(train, **kwargs)


def test_pipeline_tunes_on_the_training_part_only(synthetic, tmp_path, monkeypatch):
    seen = []
    real = tuning.tune

    def spy(train, model, **kwargs):
        seen.append(train.nnz)
        return real(train, model, **kwargs)

    monkeypatch.setattr(tuning, "tune", spy)
    report = pipeline.train_and_bundle(synthetic, model="ease", out=tmp_path, tune_budget=2.0, index=False)
    train, _ = pipeline.holdout(synthetic, 0.2)
    assert seen == [train.nnz], "the test split is never shown to the tuner"
    assert report.tuning["model"] == "ease" and report.params["l2"] == report.tuning["best_params"]["l2"]


def test_auto_picks_the_best_model_on_validation(synthetic, tmp_path):
    report = pipeline.train_and_bundle(synthetic, model="auto", out=tmp_path, index=False,
                                       common={"progress": False, "device": "cpu"})
    candidates = report.tuning["candidates"]
    assert report.model in (*tuning.AUTO_MODELS, "blend") and report.model in candidates
    best = max(selection(c) for c in candidates.values() if c["confirmation"] is not None or not any(
        d["confirmation"] is not None for d in candidates.values()))
    slack = tuning.BLEND_TOLERANCE if report.model == "blend" else 0.0
    assert selection(candidates[report.model]) >= (1 - slack) * best
    assert not report.tuning["searched"]


def test_search_widens_an_edge_and_keeps_its_trials(synthetic_split):
    """The l2 range starts above what this log wants: the search widens it downwards and carries on."""
    train, _ = synthetic_split
    fit_part, valid = pipeline.holdout(train, 0.2)
    search = tuning.Search("ease", fit_part, valid, space={"l2": Float(500.0, 1e5, log=True)})
    search.run(n_trials=4)
    before = [t.value for t in search.done]
    assert search.edges() == {"l2": "low"}
    assert search.widen() == {"l2": "[50, 100000] (log)"}
    assert [t.value for t in search.done] == before, "the new study holds every trial so far"
    search.run(n_trials=6)
    result = search.result()
    assert result.n_trials == 10 and result.widened == {"l2": "[50, 100000] (log)"}
    assert any(t["l2"] < 500 for t in result.trials[4:]), "the widened part of the range is searched"
    assert result.best_value >= max(before)
    assert search.widen() in ({}, {"l2": "[5, 100000] (log)"})


def test_tune_widens_within_its_budget(synthetic_split):
    train, _ = synthetic_split
    result = tuning.tune(train, "ease", budget=3.0, space={"l2": Float(500.0, 1e5, log=True)})
    assert result.widened["l2"].startswith("[50,"), result.widened
    assert tuning.tune(train, "ease", budget=2.0, widen_rounds=0,
                     space={"l2": Float(500.0, 1e5, log=True)}).widened == {}


def test_auto_search_leads_with_ials_and_stops_models_that_cannot_win(synthetic_split):
    train, _ = synthetic_split
    fixed = {"factors": 8, "epochs": 5, "progress": False, "device": "cpu"}
    results = {r.model: r for r in tuning.tune_auto(
        train, budget=8.0, models=("ials", "popularity"),
        fixed=lambda name: fixed if name == "ials" else {})}
    assert results["popularity"].n_trials == 1, "measured once, far behind: no more budget"
    assert results["ials"].n_trials > 3 and results["ials"].best_value > 1.1 * results["popularity"].best_value
    no_budget = tuning.tune_auto(train, budget=None, models=("ials", "popularity"),
                                 fixed=lambda name: fixed if name == "ials" else {})
    ials = next(r for r in no_budget if r.model == "ials")
    assert [t["unobserved_weight"] for t in ials.trials[:6]] == [
        p.get("unobserved_weight", IALS().unobserved_weight) for p in ({}, *IALS.start_points)], \
        "iALS: its defaults and start points first"
    assert 6 < len(ials.trials) + ials.n_pruned <= 6 + tuning.CONTINUE_TRIALS, "then the sampler's trials"


def test_the_continued_search_stops_at_its_work_bound_and_skips_points_it_cannot_afford(synthetic_split,
                                                                                       monkeypatch):
    from recsys.data import holdout

    fit_part, valid = holdout(synthetic_split[0], 0.2, 0)
    fixed = {"epochs": 5, "progress": False, "device": "cpu"}

    def started() -> tuning.Search:
        return tuning.Search("ials", fit_part, valid, fixed=fixed).run(n_trials=2)

    def finished(search: tuning.Search) -> int:
        return sum(t.state.is_finished() for t in search.study.trials)

    monkeypatch.setattr(tuning, "CONTINUE_WORK", 0.0)
    assert finished(tuning.continue_search(started(), fit_part)) == 3, "one trial spends the bound"
    monkeypatch.setattr(tuning, "CONTINUE_WORK", 1e30)
    assert finished(tuning.continue_search(started(), fit_part)) == 2 + tuning.CONTINUE_TRIALS
    monkeypatch.setattr(tuning, "SCALE_WORK", 1.0)  # no point is affordable: none is fitted
    search = tuning.continue_search(started(), fit_part)
    assert len(search.trials) == 2 and finished(search) == 2 + tuning.CONTINUE_TRIALS
    assert len(search.run(n_trials=1).trials) == 3, "the bound holds only while continuing"


def test_default_budget_grows_with_the_log_within_bounds(synthetic):
    assert tuning.default_budget(synthetic) == tuning.budget_for(synthetic.nnz)
    assert tuning.budget_for(0) < tuning.budget_for(100_000) <= 480 < tuning.budget_for(1_000_000) <= 900


def test_a_model_that_refuses_the_data_stops_the_search_with_its_reason(synthetic_split, monkeypatch):
    from recsys.models import baselines

    monkeypatch.setattr(baselines, "MAX_DENSE_BYTES", 2**10)
    train, _ = synthetic_split
    with pytest.raises(DataValidationError, match="ease cannot be tuned on this data: EASE keeps dense"):
        tuning.tune(train, "ease", budget=30.0)
    results = tuning.tune_auto(train, budget=None, models=("popularity", "ease"))
    assert [r.model for r in results] == ["popularity"], "a refusing contender is skipped, not fatal"


def test_validation_hook_sees_every_epoch_and_can_stop_a_fit(synthetic_split):
    from recsys.models import IALS
    from recsys.models.loop import on_validation

    train, _ = synthetic_split
    fit_part, valid = pipeline.holdout(train, 0.2)
    seen = []
    with on_validation(lambda epoch, value: seen.append((epoch, value))):
        IALS(factors=8, epochs=5, patience=5, progress=False, device="cpu").fit(fit_part, valid)
    assert [e for e, _ in seen] == [1, 2, 3, 4, 5] and all(0 <= v <= 1 for _, v in seen)

    class Stop(Exception):
        pass

    def stop_at_two(epoch: int, value: float) -> None:
        if epoch == 2:
            raise Stop
    with pytest.raises(Stop), on_validation(stop_at_two):
        IALS(factors=8, epochs=5, progress=False, device="cpu").fit(fit_part, valid)
    IALS(factors=8, epochs=3, progress=False, device="cpu").fit(fit_part, valid)  # outside: no hook


def test_trials_whose_curve_falls_below_the_median_are_pruned(synthetic_split):
    train, _ = synthetic_split
    fixed = {"factors": 8, "epochs": 8, "patience": 8, "progress": False, "device": "cpu"}
    result = tuning.tune(train, "ials", n_trials=20, budget=None, fixed=fixed)
    assert result.n_pruned > 0 and result.n_trials + result.n_pruned == 20
    assert len(result.trials) == result.n_trials, "only complete trials are listed"


def test_a_restarted_study_keeps_each_trials_curve_for_the_pruner(synthetic_split):
    """Regression: widening (and `try_point`) restarts the study; without the earlier trials' epoch values the
    median pruner judged each new trial against the first one run after the restart alone, and on a log where
    that trial climbed fast (Diginetica) every later trial was pruned at its fourth epoch."""
    from recsys.data import holdout

    fit_part, valid = holdout(synthetic_split[0], 0.2)
    search = tuning.Search("ials", fit_part, valid, fixed={"factors": 8, "epochs": 6, "progress": False,
                                                           "device": "cpu"})
    search.run(n_trials=2)
    curves = [t.intermediate_values for t in search.done]
    assert all(len(c) >= 1 for c in curves)
    best = search.study.best_trial.params
    search.try_point({**best, "reg": best["reg"] * 2})
    assert [t.intermediate_values for t in search.done][:2] == curves


def test_start_points_run_whole_even_where_the_pruner_would_stop_them(synthetic_split, monkeypatch):
    import optuna

    from recsys.data import holdout

    monkeypatch.setattr(optuna.trial.Trial, "should_prune", lambda self: True)  # a pruner that stops everything
    fit_part, valid = holdout(synthetic_split[0], 0.2)
    search = tuning.Search("ials", fit_part, valid, fixed={"factors": 8, "epochs": 6, "progress": False,
                                                           "device": "cpu"})
    search.run(n_trials=len(search.starts) + 2)
    states = [t.state.name for t in search.study.trials if t.state.name != "WAITING"]  # (a queued neighbour)
    assert len(search.starts) == 1 + len(IALS.start_points)
    assert states == ["COMPLETE"] * len(search.starts) + ["PRUNED"] * 2


def test_ials_starts_from_its_defaults_then_the_cheap_regimes_then_a_sweep_of_the_unobserved_weight(
        synthetic_split):
    from recsys.models import IALS

    train, _ = synthetic_split
    fixed = {"factors": 8, "epochs": 3, "progress": False, "device": "cpu"}
    result = tuning.tune(train, "ials", n_trials=6, budget=None, fixed=fixed)
    assert result.trials[0]["unobserved_weight"] == IALS().unobserved_weight
    assert [(t["unobserved_weight"], t["reg"], t["confidence"]) for t in result.trials[1:4]] == \
        [(3.0, 30.0, "power"), (0.03, 1.0, "binary"), (0.03, 10.0, "power")], \
        "the regime with weights as confidences and a large unobserved weight, Hu et al.'s, small alpha"
    assert all(t["reg_exponent"] == 0.0 for t in result.trials[1:4])
    assert [t["unobserved_weight"] for t in result.trials[4:6]] == [0.01, 0.001]
    result.trials = [result.trials[0], *result.trials[4:6]]
    assert all(t["reg"] == IALS().reg for t in result.trials[:3]), "only the swept parameter differs"
    fixed_weight = tuning.tune(train, "ials", n_trials=2, budget=None, fixed={**fixed, "unobserved_weight": 0.5})
    assert fixed_weight.trials[1]["reg"] != IALS().reg, "nothing to sweep: the sampler's own second trial"


def test_weight_parameters_are_not_searched_on_a_log_whose_weights_are_all_equal(synthetic_split):
    from recsys.data import from_arrays, holdout

    train, _ = synthetic_split
    fit_part, valid = holdout(train, 0.2)
    weighted = tuning.Search("ials", fit_part, valid)
    assert {"confidence", "alpha"} <= set(weighted.space), "ratings: how they map to confidence matters"
    frame = train.to_frame()
    binary = from_arrays(frame["user"].to_numpy(), frame["item"].to_numpy())
    fit_part, valid = holdout(binary, 0.2)
    search = tuning.Search("ials", fit_part, valid)
    assert not {"confidence", "alpha"} & set(search.space) and "unobserved_weight" in search.space
    assert "confidence" in tuning.Search("ials", fit_part, valid, space=IALS.search_space).space, \
        "an explicit space is searched as given"


def test_neighbours_move_one_parameter_one_step_inside_its_range():
    space = {"factors": Int(16, 512, log=True), "reg": Float(1e-4, 100.0, log=True),
             "nu": Float(0.0, 1.0), "confidence": Choice(("binary", "power"))}
    point = {"factors": 512, "reg": 1.0, "nu": 0.1, "confidence": "binary"}
    moved = tuning.neighbours(space, point)
    assert all(sum(p[n] != point[n] for n in point) == 1 for p in moved), "one parameter at a time"
    assert {p["factors"] for p in moved} == {512, round(512 / 3 ** 0.5)}, "the upper edge is not crossed"
    assert {p["reg"] for p in moved} == {1.0, 3.0, 1 / 3}
    assert {p["nu"] for p in moved} == {0.1, 0.35, 0.0}, "clipped to the range's low edge"
    assert {p["confidence"] for p in moved} == {"binary", "power"}
    assert len(moved) == 1 + 2 + 2 + 1
    assert tuning.neighbours({"factors": Int(1, 64, log=True)}, {"factors": 1}) == [{"factors": 2}], \
        "an int moves by at least 1"


def test_after_the_start_points_every_other_trial_is_a_neighbour_of_the_best(synthetic_split):
    from recsys.data import holdout

    fit_part, valid = holdout(synthetic_split[0], 0.2)
    search = tuning.Search("ials", fit_part, valid, fixed={"factors": 8, "epochs": 3, "progress": False,
                                                           "device": "cpu"})
    n_starts = len(search.starts)
    search.run(n_trials=n_starts + 6)
    trials = [t for t in search.study.trials if t.state.name != "WAITING"]
    assert search.n_local == 4, "after each second trial, the last one's still queued"
    for t in trials[n_starts:]:
        earlier = [e for e in trials[:t.number] if e.state.name == "COMPLETE" and e.value is not None]
        best = max(earlier, key=lambda e: e.value).params
        if t.system_attrs.get("fixed_params"):  # enqueued: a neighbour of the best before it
            assert t.params in tuning.neighbours(search.space, best)
    assert sum(bool(t.system_attrs.get("fixed_params")) for t in trials[n_starts:]) == 3


def test_without_a_budget_probes_are_bounded_by_work_not_seconds(synthetic):
    from types import SimpleNamespace

    wide = SimpleNamespace(nnz=1_000_000, n_users=30_000, n_items=40_000)  # the 1M x 40k log's shape
    assert tuning.probe_bound("mf", wide, {}) is None, "3e11 per epoch of full softmax: not measured"
    assert tuning.probe_bound("ials", wide, {}) == {"epochs": 17}
    assert tuning.probe_bound("mf", synthetic, {}) == {"epochs": tuning.PROBE_EPOCHS["mf"]}
    assert tuning.probe_bound("mf", synthetic, {"epochs": 5}) == {}, "a caller's epochs are kept"
    assert tuning.probe_bound("ease", synthetic, {}) == {}
    assert tuning.epoch_work("mf", {"factors": 8}, wide) == 30_000 * 40_000 * 8


def test_a_trial_cut_by_its_time_bound_is_recorded(synthetic_split):
    """With a budget, a probe's fit may be ended by time: the result says which trial and after how many
    epochs, so the manifest records what the wall clock cut (without a budget nothing is)."""
    train, _ = synthetic_split
    fit_part, valid = pipeline.holdout(train, 0.2)
    fixed = {"factors": 8, "epochs": 50, "patience": 50, "progress": False, "device": "cpu"}
    search = tuning.Search("ials", fit_part, valid, fixed=fixed).run(n_trials=1, trial_seconds=1e-6)
    cut = search.result().cut
    assert len(cut) == 1 and cut[0]["trial"] == 0 and 1 <= cut[0]["epochs_run"] < 50
    assert tuning.Search("ials", fit_part, valid, fixed=fixed).run(n_trials=1).result().cut == []


def selection(candidate: dict) -> float:
    """recsys.tuning.TuneResult.selection_value from a manifest's candidate entry."""
    if candidate["confirmation"] is None:
        return candidate["value"]
    return (candidate["value"] + candidate["confirmation"]) / 2


def test_close_models_are_confirmed_on_a_second_split_and_chosen_by_both(synthetic_split):
    """The leader of one noisy validation split is not trusted alone: models within SELECT_GAP are refitted
    at their best parameters on an independent split, and the mean decides."""
    train, _ = synthetic_split
    results = tuning.tune_auto(train, budget=None, models=("popularity", "spectral", "ease"))
    singles = [r for r in results if r.model != "blend"]
    leader = max(r.best_value for r in singles)
    for r in singles:
        close = r.best_value >= (1 - tuning.SELECT_GAP) * leader
        assert (r.confirmation is not None) == close, r
    chosen = tuning.choose(singles)
    assert chosen.confirmation is not None
    assert chosen.selection_value == max(r.selection_value for r in singles if r.confirmation is not None)
    fit_part, _ = pipeline.holdout(train, 0.2)
    conf_fit, conf_valid = tuning.confirmation_split(train, fit_part, 0.2, 0)
    assert conf_fit.nnz + conf_valid.nnz == fit_part.nnz, "timed log: the period before validation"
    assert tuning.choose([tuning.TuneResult("a", {}, 0.3, "ndcg@10", 1, 0, 0.2, confirmation=0.1),
                          tuning.TuneResult("b", {}, 0.25, "ndcg@10", 1, 0, 0.2, confirmation=0.2),
                          tuning.TuneResult("c", {}, 0.5, "ndcg@10", 1, 0, 0.2)]).model == "b"


def test_after_a_budgeted_search_the_leaders_best_trials_are_confirmed_and_the_best_mean_wins(synthetic_split):
    """The winner's curse: the best of many trials on one split is the luckiest; its runners-up are scored on
    the confirmation split too, and the parameters with the best mean of both scores are kept."""
    train, _ = synthetic_split
    fit_part, valid = pipeline.holdout(train, 0.2)
    search = tuning.Search("ease", fit_part, valid).run(n_trials=6)
    top = search.top(tuning.CONFIRM_TRIALS)
    values = sorted((t.value for t in search.done), reverse=True)
    assert [t["value"] for t in top] == values[:tuning.CONFIRM_TRIALS]
    assert all(t["seconds"] > 0 and "l2" in t["params"] for t in top)

    alone = search.result()
    tuning.confirm([alone], train, fit_part, 0.2)
    assert alone.confirmation is None and alone.confirmed == [], "no budget: a lone leader is not scored again"
    assert tuning.runners_up(alone, budget=1e-6) == [], "fits over CONFIRM_BUDGET_SHARE of the budget"

    result = search.result()
    tuning.confirm([result], train, fit_part, 0.2, budget=1e6)
    assert [c["params"] for c in result.confirmed] == [t["params"] for t in top]
    best = max(result.confirmed, key=lambda c: (c["value"] + c["confirmation"]) / 2)
    assert (result.best_params, result.best_value, result.confirmation) == \
        (best["params"], best["value"], best["confirmation"])
    conf_fit, conf_valid = tuning.confirmation_split(train, fit_part, 0.2, 0)
    again = evaluate(make_model("ease", **best["params"]).fit(conf_fit), conf_valid, 10)["ndcg@10"]
    assert again == pytest.approx(best["confirmation"])


@pytest.mark.parametrize("tolerance, averaged", [(1.0, True), (-1.0, False)])
def test_the_leaders_confirmed_trials_are_averaged_unless_the_best_alone_beats_the_average(
        synthetic_split, monkeypatch, tolerance, averaged):
    """A long search's best trials lie on a plateau validation cannot order; their equal-weight blend is kept
    unless the best trial alone beats it by more than BLEND_TOLERANCE (here forced each way)."""
    from recsys.models.blend import Blend

    monkeypatch.setattr(tuning, "BLEND_TOLERANCE", tolerance)
    train, _ = synthetic_split
    fit_part, valid = pipeline.holdout(train, 0.2)
    fixed = {"factors": 8, "epochs": 4, "progress": False, "device": "cpu"}
    result = tuning.Search("ials", fit_part, valid, fixed=fixed).run(n_trials=6).result()
    tuning.confirm([result], train, fit_part, 0.2, budget=1e6)
    members = [c["params"] for c in result.confirmed]
    assert len(members) == tuning.CONFIRM_TRIALS
    conf_fit, conf_valid = tuning.confirmation_split(train, fit_part, 0.2, 0)
    blend = Blend.from_fitted([make_model("ials", **p).fit(conf_fit) for p in members], [1.0] * len(members),
                              conf_fit)
    if averaged:
        assert result.members == members
        assert result.confirmation == pytest.approx(evaluate(blend, conf_valid, 10)["ndcg@10"])
        assert result.best_value == pytest.approx(sum(c["value"] for c in result.confirmed) / len(members))
        name, params = result.estimator()
        assert name == "blend" and params["components"] == [["ials", p] for p in members]
        assert make_model(name, **params).fit(train).exported_.item_vectors.shape[0] == train.n_items
    else:
        assert result.members == [] and result.estimator() == ("ials", result.best_params)
    closed = tuning.Search("ease", fit_part, valid).run(n_trials=6).result()
    tuning.confirm([closed], train, fit_part, 0.2, budget=1e6)
    assert len(closed.confirmed) == tuning.CONFIRM_TRIALS and closed.members == [], "closed-form: not averaged"


def test_a_point_that_differs_only_in_an_idle_parameter_is_not_fitted_again(synthetic_split):
    """iALS ignores alpha under binary confidences: the second point is answered from the first trial, and the
    best trials (`top`) list that model once."""
    train, _ = synthetic_split
    fit_part, valid = pipeline.holdout(train, 0.2)
    space = {"confidence": Choice(("binary", "power")), "alpha": Float(0.1, 4.0, log=True)}
    search = tuning.Search("ials", fit_part, valid, space=space,
                           fixed={"factors": 8, "epochs": 3, "progress": False, "device": "cpu"})
    for alpha in (0.5, 2.0):
        search.try_point({"confidence": "binary", "alpha": alpha})
    search.try_point({"confidence": "power", "alpha": 2.0})
    assert len(search.done) == 3 and len(search.trials) == 2, "two fits"
    assert search.done[0].value == search.done[1].value
    assert [t["params"]["confidence"] for t in search.top(3)].count("binary") == 1
    assert IALS.effective_params({"confidence": "binary", "alpha": 2.0}) == {"confidence": "binary"}
    assert IALS.effective_params({"confidence": "power", "alpha": 2.0}) == {"confidence": "power", "alpha": 2.0}


def test_without_a_budget_ials_runs_the_start_points_its_work_bound_affords(synthetic_split):
    from types import SimpleNamespace

    train, _ = synthetic_split
    fit_part, valid = pipeline.holdout(train, 0.2)
    search = tuning.Search("ials", fit_part, valid, fixed={"progress": False, "device": "cpu"})
    assert len(search.starts) == 6
    assert tuning.affordable_starts(search, fit_part, {"epochs": 128}) == 6, "a small log: every start point"
    wide = SimpleNamespace(nnz=1_000_000, n_users=30_000, n_items=40_000)
    bound = tuning.probe_bound("ials", wide, {})
    assert tuning.affordable_starts(search, wide, bound) == 4, "the defaults, three 32-factor regimes"
    huge = SimpleNamespace(nnz=50_000_000, n_users=10**6, n_items=10**5)
    assert tuning.affordable_starts(search, huge, {"epochs": 3}) == 1, "at least the defaults"
    results = tuning.tune_auto(train, budget=None, models=("popularity", "ials"),
                               fixed=lambda name: {"progress": False, "device": "cpu"} if name == "ials" else {})
    popularity, ials = results
    assert popularity.n_trials == 1 and 7 < ials.n_trials + ials.n_pruned <= 7 + tuning.CONTINUE_TRIALS, \
        "popularity; the six starts, the best of them wider, then the sampler's trials"
    assert ials.trials[6]["factors"] > ials.trials[0]["factors"], "the seventh trial: the best start, wider"


def test_without_a_budget_the_best_start_is_measured_again_as_wide_as_its_work_bound_affords(synthetic_split):
    from types import SimpleNamespace

    train, _ = synthetic_split
    fit_part, valid = pipeline.holdout(train, 0.2)
    search = tuning.Search("ials", fit_part, valid, fixed={"progress": False, "device": "cpu", "epochs": 3})
    search.run(n_trials=2)  # the defaults (128 factors) and the first 32-factor regime; four starts still queued
    best = search.study.best_trial.params
    wider = tuning.scale_up(search, fit_part, {"epochs": 3})
    expected = best["factors"]
    while 2 * expected <= 512 and 3 * tuning.epoch_work("ials", {"factors": 2 * expected}, fit_part) \
            <= tuning.SCALE_WORK:
        expected *= 2
    assert expected > best["factors"], "a small log affords a wider fit"
    assert wider == {**best, "factors": expected}, "the best point, only its factors multiplied by a power of two"
    wide = SimpleNamespace(nnz=1_000_000, n_users=30_000, n_items=40_000)
    assert tuning.scale_up(search, wide, tuning.probe_bound("ials", wide, {}))["factors"] == 2 * best["factors"]
    huge = SimpleNamespace(nnz=50_000_000, n_users=10**6, n_items=10**5)
    assert tuning.scale_up(search, huge, {"epochs": 3}) is None, "not even a doubling fits"
    search.try_point(wider)
    assert [t["factors"] for t in search.trials][-1] == expected, "it runs now, ahead of the queued starts"
    assert len(search.done) == 3
    fixed = tuning.Search("ials", fit_part, valid, fixed={"progress": False, "device": "cpu", "epochs": 3,
                                                          "factors": 16}).run(n_trials=1)
    assert tuning.scale_up(fixed, fit_part, {"epochs": 3}) is None, "factors set by the user stay as set"


@pytest.mark.parametrize("budget", [None, 2.0])
def test_auto_with_no_model_that_takes_the_data_says_so(synthetic_split, budget):
    train, _ = synthetic_split
    with pytest.raises(DataValidationError, match=r"No model among \['ials', 'mf'\] could be fitted"):
        tuning.tune_auto(train, budget=budget, models=("ials", "mf"), fixed=lambda name: {"factors": 0})


def result(model: str, value: float, confirmation: float | None = None) -> tuning.TuneResult:
    return tuning.TuneResult(model, {}, value, "ndcg@10", 1, 0, 0.2, confirmation=confirmation)


def test_the_two_best_confirmed_models_are_blended_weighted_on_validation_and_confirmed(synthetic_split):
    train, test = synthetic_split
    results = tuning.tune_auto(train, budget=None, models=("popularity", "spectral", "ease"))
    confirmed = sorted((r for r in results if r.confirmation is not None and r.model != "blend"),
                       key=lambda r: r.selection_value, reverse=True)
    assert len(confirmed) == 2, "both closed-form models are close on this log"
    blend = results[-1]
    assert blend.model == "blend" and blend.confirmation is not None
    assert [c[0] for c in blend.best_params["components"]] == [r.model for r in confirmed], "the leader first"
    assert blend.best_params["weights"][0] in tuning.BLEND_SHARES
    assert blend.best_value == max(t["value"] for t in blend.trials) and len(blend.trials) == 3
    fitted = make_model("blend", **blend.best_params).fit(train)
    assert evaluate(fitted, test, 10)["ndcg@10"] > 0
    fit_part, valid = pipeline.holdout(train, 0.2)
    singles = results[:-1]
    again = tuning.blend_leaders(singles, train, fit_part, valid, 0.2, lambda name: {})
    assert again.best_params == blend.best_params and again.confirmation == blend.confirmation
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tuning, "BLEND_WORK", 0.0)
        assert tuning.blend_leaders(singles, train, fit_part, valid, 0.2, lambda name: {}) is None
    assert tuning.blend_leaders(singles, train, fit_part, valid, 0.2, lambda name: {}, budget=1e-6) is None
    assert tuning.blend_leaders(singles, train, fit_part, valid, 0.2, lambda name: {}, budget=1e6) is not None


def test_an_averaged_leader_enters_a_blend_as_its_members_sharing_the_leaders_weight(synthetic_split):
    train, _ = synthetic_split
    fit_part, valid = pipeline.holdout(train, 0.2)
    searches = {name: tuning.Search(name, fit_part, valid).run(n_trials=2) for name in ("ease", "spectral")}
    results = [s.result() for s in searches.values()]
    tuning.confirm(results, train, fit_part, 0.2)
    leader = max(results, key=lambda r: r.selection_value)
    other = next(r for r in results if r is not leader)
    leader.members = [t["params"] for t in searches[leader.model].top(2)]
    blend = tuning.blend_leaders(results, train, fit_part, valid, 0.2, lambda name: {})
    components, weights = blend.best_params["components"], blend.best_params["weights"]
    assert components == [[leader.model, p] for p in leader.members] + [[other.model, other.best_params]]
    share = weights[0] * 2
    assert share in tuning.BLEND_SHARES and weights == [share / 2, share / 2, pytest.approx(1 - share)]
    with pytest.MonkeyPatch.context() as mp:  # the members together cost too much, the best alone does not
        mp.setattr(tuning, "blend_cost", lambda r, p, *_: 2.0 if r is leader else 1.0)
        alone = tuning.blend_leaders(results, train, fit_part, valid, 0.2, lambda name: {}, budget=3.0 / 0.25)
    assert alone.best_params["components"] == [[leader.model, leader.best_params], [other.model, other.best_params]]


def test_choose_keeps_popularity_unless_a_model_beats_it_by_its_margin():
    def result(name: str, value: float) -> tuning.TuneResult:
        return tuning.TuneResult(name, {}, value, "ndcg@10", 1, 0.0, 0.2, confirmation=value)

    tie = 0.40 * (1 + tuning.POPULARITY_MARGIN / 2)
    assert tuning.choose([result("popularity", 0.40), result("ials", tie)]).model == "popularity"
    clear = 0.40 * (1 + 2 * tuning.POPULARITY_MARGIN)
    assert tuning.choose([result("popularity", 0.40), result("ials", clear)]).model == "ials"
    assert tuning.choose([result("ials", 0.40)]).model == "ials", "without popularity measured: the best"


def test_choose_prefers_a_blend_within_its_tolerance_of_the_best_single_model():
    near = 1 - tuning.BLEND_TOLERANCE / 2
    assert tuning.choose([result("a", 0.30, 0.30), result("blend", 0.30 * near, 0.30 * near)]).model == "blend"
    far = 1 - 2 * tuning.BLEND_TOLERANCE
    assert tuning.choose([result("a", 0.30, 0.30), result("blend", 0.30 * far, 0.30 * far)]).model == "a"
    assert tuning.choose([result("a", 0.30, 0.30), result("blend", 0.31, 0.31)]).model == "blend"


def test_fit_work_counts_each_models_leading_term():
    from types import SimpleNamespace

    data = SimpleNamespace(nnz=1000, n_users=100, n_items=50)
    assert tuning.fit_work("ials", {"factors": 8, "epochs": 3}, data) == 3 * (1000 + 150) * 64
    assert tuning.fit_work("ease", {}, data) == 50 ** 3
    assert tuning.fit_work("spectral", {"factors": 16, "low_pass": 4}, data) == 150 * 16 ** 2
    assert tuning.fit_work("popularity", {}, data) == 0.0


def test_with_a_budget_the_closed_form_searches_go_past_their_counts_only_within_their_share(synthetic_split):
    """A wide catalogue's spectral trials cost a minute each: with a budget the closed-form searches take their
    longer count only while they stay within CLOSED_FORM_SHARE of it, and never fewer trials than without one."""
    train, _ = synthetic_split
    models = ("spectral", "ease")

    def trials(budget: float | None) -> list[int]:
        return [r.n_trials for r in tuning.tune_auto(train, budget=budget, models=models) if r.model in models]

    base = [tuning.closed_form_trials(m, None) for m in models]
    assert trials(None) == base == [4, 4]
    assert trials(1e-3) == base, "a share of a millisecond: the counts without a budget, nothing more"
    assert trials(3600.0) == [tuning.closed_form_trials(m, 3600.0) for m in models] == [24, 10]


@pytest.mark.parametrize("name", ["ials", "mf", "two_tower", "sasrec", "ease", "spectral", "itemknn", "popularity"])
def test_what_a_model_searches_is_declared_on_its_class_and_allowed_by_its_constraints(name):
    """One place per model: its search space, start points, trial defaults and weight parameters are class
    attributes, every name is a parameter of the model, and every range end and start value passes the
    model's own constraints (a typo or a range past a model's limit fails here, not in a trial)."""
    from recsys.models import model_class

    cls = model_class(name)
    params = set(cls._param_names())
    assert cls.search_space is not None and set(cls.search_space) <= params
    for param, dim in cls.search_space.items():
        constraint = cls._parameter_constraints[param]
        ends = dim.values if isinstance(dim, Choice) else (dim.low, dim.high)
        assert all(constraint.check(v) for v in ends), (param, dim, constraint.describe())
    for point in cls.start_points:
        assert set(point) <= set(cls.search_space), point
        assert all(cls.search_space[p].check(v) and cls._parameter_constraints[p].check(v) for p, v in point.items())
    assert set(cls.trial_defaults) <= params and set(cls.weight_parameters) <= set(cls.search_space)
    assert tuning.search_space(name) is cls.search_space


def test_a_search_dimension_is_a_constraint_with_the_same_messages():
    assert Int(16, 512, log=True).check(32) and not Int(16, 512).check(8) and not Int(16, 512).check(32.0)
    assert Int(16, 512, log=True).describe() == "an int >= 16 and <= 512 (log scale)"
    assert Choice(("binary", "power")).check("power") and not Choice((False, True)).check(0)
    with pytest.raises(DataValidationError, match="No search space for model 'blend'"):
        tuning.search_space("blend")
