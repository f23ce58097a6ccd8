"""`recsys` command line: train, tune, evaluate, recommend, similar, recommend-all, info, serve.

Thin by design: every command parses arguments, calls the library and formats the answer.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from . import __version__
from .bundle import CURRENT, resolve, verify
from .exceptions import DataValidationError, RecsysError
from .models import MODEL_NAMES, model_class
from .retrieval import describe
from .tuning import MAX_BUDGET, default_budget

log = logging.getLogger("recsys")


# ------------------------------------------------------------------------------------------ commands
def _load_interactions(args: argparse.Namespace):
    from .data import read_interactions, read_table
    from .datasets import load_movielens

    on_error = "drop" if args.drop_bad_rows else "raise"
    if args.data is None:
        ds = load_movielens("ml-latest-small")
        return read_interactions(ds.interactions, user_col="user", item_col="item", weight_col="rating",
                                 time_col="timestamp", item_metadata=ds.items, on_error=on_error,
                                 catalog=args.catalog)
    items = read_table(args.items, sep=args.sep, id_cols=[args.items_id_col]).rename(
        columns={args.items_id_col: "item"}) if args.items else None
    return read_interactions(args.data, user_col=args.user_col, item_col=args.item_col,
                             weight_col=args.weight_col, time_col=args.time_col, duplicates=args.duplicates,
                             on_error=on_error, item_metadata=items, catalog=args.catalog, sep=args.sep,
                             title_col=args.title_col)


def _with_feedback(inter, url: str):
    """The base log plus every feedback event stored at `url` (recsys.feedback), as new Interactions."""
    from .data import read_interactions
    from .feedback import FeedbackStore

    store = FeedbackStore(url)
    events = store.to_frame()
    base = inter.to_frame()
    if inter.timestamp is None:
        events = events.drop(columns=["timestamp"])
    frame = pd.concat([base, events[base.columns]], ignore_index=True)
    print(f"Feedback: {len(events):,} events from the database added to {len(base):,} logged interactions")
    metadata = inter.item_metadata
    added = [{"item": item, **attributes} for item, attributes, _ in store.added()]
    if metadata is not None and added:  # items added to the service (POST /v1/items) keep their attributes
        added = pd.DataFrame(added)
        added = added[[c for c in added.columns if c in metadata.columns]]
        metadata = pd.concat([metadata, added[~added["item"].isin(metadata["item"])]], ignore_index=True)
    return read_interactions(frame, user_col="user", item_col="item", weight_col="weight",
                             time_col="timestamp" if inter.timestamp is not None else None,
                             duplicates="sum", item_metadata=metadata)


class _Stderr(logging.Handler):
    """Writes to whatever sys.stderr is at the time (not the stream it saw when installed)."""

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record), file=sys.stderr)


def _show_progress(args: argparse.Namespace) -> None:
    """Print the job's phases (logger 'recsys.progress') to stderr, unless --quiet."""
    progress = logging.getLogger("recsys.progress")
    if not any(isinstance(h, _Stderr) for h in progress.handlers):
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        progress.addHandler(handler)
        progress.propagate = False
    progress.setLevel(logging.WARNING if getattr(args, "quiet", False) else logging.INFO)


def cmd_train(args: argparse.Namespace) -> int:
    from .pipeline import phase, train_and_bundle

    _show_progress(args)
    with phase(f"reading {args.data or 'the bundled MovieLens data'}"):
        inter = _load_interactions(args)
    if args.from_db:
        inter = _with_feedback(inter, args.from_db)
    print(f"Data: {inter.nnz:,} interactions, {inter.n_users:,} users, {inter.n_items:,} items"
          + (f" ({inter.n_dropped} bad rows dropped)" if inter.n_dropped else ""))
    params = _params_arg(args.params)
    params.update({k: v for k, v in {"epochs": args.epochs, "factors": args.factors, "loss": args.loss}.items()
                   if v is not None})
    if args.item_text_cols:
        if args.model != "two_tower" or not args.items:
            raise DataValidationError("--item-text-cols embeds item text for the two-tower's item tower: add "
                                      "--model two_tower and the --items file that holds the columns.")
        params["text_columns"] = [c.strip() for c in args.item_text_cols.split(",") if c.strip()]
    if params and args.model == "auto":
        raise DataValidationError(f"Parameters {sorted(params)} need a model: add --model (one of {list(MODEL_NAMES)}).")
    if params:
        accepted = model_class(args.model)._param_names()
        unknown = sorted(set(params) - set(accepted))
        if unknown:
            raise DataValidationError(f"Model {args.model!r} has no parameter(s) {unknown} (from --params or "
                                      f"--epochs/--factors/--loss). Its parameters: {accepted}.")
    budget = (args.tune_budget or default_budget(inter)) if args.tune else None
    report = train_and_bundle(inter, model=args.model, params=params, out=args.out,
                              test_fraction=args.test_fraction, refit=not args.no_refit, seed=args.seed,
                              index=not args.no_index, target_recall=args.target_recall, tune_budget=budget,
                              common={"seed": args.seed, "progress": not args.quiet, "device": args.device})
    if report.tuning:
        _print_tuning(report.tuning)
    print(f"\nModel: {report.model} {json.dumps(report.params)}")
    print(f"\nHeld-out evaluation ({_split_words(report.split, args.test_fraction)}, full ranking, seen items "
          "excluded):")
    print(report.table().to_string(float_format=lambda v: f"{v:.4f}"))
    print(f"\nBundle: {report.bundle}  (published as {Path(args.out) / CURRENT})")
    print(f"Trained in {report.seconds:.1f} s")
    return 0


def _split_words(split: dict, test_fraction: float) -> str:
    if split["protocol"] == "random holdout":
        return f"a random {test_fraction:.0%} of each user's interactions: the log has no timestamps"
    ties = f"; {split['tied_share']:.1%} of interactions tie in time, broken by a {split['tie_break']}" \
        if split["tied_share"] else ""
    return f"each user's latest {test_fraction:.0%}{ties}"


def _params_arg(text: str | None) -> dict:
    """--params: inline JSON, or a JSON file (a `recsys tune --out` file: its best_params are used)."""
    if not text:
        return {}
    path = Path(text)
    try:
        value = json.loads(path.read_text() if path.exists() else text)
    except json.JSONDecodeError as e:
        raise DataValidationError(f"--params {text!r} is neither a JSON file nor inline JSON ({e}). "
                                  'Example: --params \'{"factors": 128}\'.') from None
    value = value.get("best_params", value) if isinstance(value, dict) else value
    if not isinstance(value, dict):
        raise DataValidationError(f"--params must hold a JSON object of parameters. Got {type(value).__name__}.")
    return value


def _print_tuning(tuning: dict) -> None:
    print(f"\nTuning ({tuning['metric']} on a validation split carved from the training part):")
    for name, c in tuning["candidates"].items():
        print(f"  {name:<10} {c['value']:.4f} after {c['n_trials']} trial(s)  {json.dumps(c['params'])}")
    for name, side in tuning.get("edges", {}).items():
        print(f"  note: the best {name} is at the {side} edge of its search range")


def cmd_tune(args: argparse.Namespace) -> int:
    from .data import holdout
    from .pipeline import tune_candidates

    inter = _load_interactions(args)
    train, _ = holdout(inter, args.test_fraction, args.seed)
    budget = args.budget if args.budget is not None or args.trials else default_budget(train)
    results = tune_candidates(train, args.model, budget=budget, n_trials=args.trials,
                              common={"seed": args.seed, "progress": not args.quiet, "device": args.device},
                              validation_fraction=args.test_fraction, seed=args.seed)
    for r in results:
        print(f"{r.model}: best {r.metric} {r.best_value:.4f} after {r.n_trials} trials in {r.seconds:.0f} s: "
              f"{json.dumps(r.best_params)}" + "".join(f"\n  note: the best {p} is at the {side} edge of its "
                                                       "range: widen it" for p, side in r.edges.items()))
    best = max(results, key=lambda r: r.best_value)
    print(f"Best: {best.model} ({best.metric} {best.best_value:.4f} on validation)")
    if args.out:
        Path(args.out).write_text(json.dumps({"best_model": best.model, "best_params": best.best_params,
                                              "results": [r.to_dict() for r in results]}, indent=2))
        print(f"Wrote {args.out}: recsys train --model {best.model} --params {args.out}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    manifest = verify(args.bundle)
    evaluation = manifest.evaluation
    metrics = {manifest.model_class: manifest.metrics, **evaluation.get("baselines", {})}
    if args.json:
        print(json.dumps(manifest.metrics, indent=2))
        return 0
    frame = pd.DataFrame(metrics).T
    ties = f", {evaluation['tied_share']:.1%} tied in time, broken by a {evaluation['tie_break']}" \
        if evaluation.get("tied_share") else ""
    print(f"Bundle {resolve(args.bundle)}: {evaluation.get('protocol', 'holdout')} "
          f"(test fraction {evaluation.get('test_fraction', '?')}{ties})")
    print(frame.drop(columns=["users"], errors="ignore").to_string(float_format=lambda v: f"{v:.4f}"))
    return 0


def _engine(bundle_path: str):
    from .engine import load_engine  # queries need numpy and annoy only, not torch

    return load_engine(bundle_path)[0]


def _print_ranked(ids: np.ndarray, scores: np.ndarray, titles: np.ndarray | None) -> None:
    for rank, (item, score) in enumerate(zip(ids, scores), 1):
        if item is None:
            continue
        title = f"  {titles[rank - 1]}" if titles is not None and titles[rank - 1] is not None else ""
        print(f"{rank:>3}. {item:<12} {score:8.4f}{title}")


def cmd_recommend(args: argparse.Namespace) -> int:
    """A user's answer as the service gives it (`Engine.recommend_user`): their stored feedback folded in
    (--feedback-db), the popularity fallback for an unknown user, paging, exclusions and attribute filters."""
    from .catalogue import Filter
    from .engine import load_engine
    from .explain import annotate

    if args.history is not None and args.feedback_db:
        raise DataValidationError("--feedback-db reads a user's stored events: use it with --user, not --history.")
    engine, bundle = load_engine(args.bundle)
    if args.user is not None:
        history = _stored_feedback(args.feedback_db, args.user) if args.feedback_db else None
    else:
        history = [(item, 1.0) for item in args.history.split(",") if item]
    rec = engine.recommend_user(args.user, args.k, offset=args.offset,
                                exclude=[i for part in args.exclude for i in part.split(",") if i],
                                filters=[*([Filter(args.genre_col, tuple(args.genre))] if args.genre else []),
                                         *args.filter],
                                include_seen=args.include_seen, history=history)
    doc = {"user": args.user, "items": engine.catalogue.scored_items(rec.item_ids, rec.scores),
           "fallback": rec.fallback, "model_version": bundle.path.name}
    if args.explain:
        doc["explanation"] = annotate(engine, args.user, doc["items"], history)
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    titles = engine.catalogue.titles(rec.item_ids)
    print(_recommendation_header(args, rec.fallback, history))
    for rank, (item, score) in enumerate(zip(rec.item_ids, rec.scores), args.offset + 1):
        title = None if titles is None else titles[rank - args.offset - 1]
        print(f"{rank:>3}. {item:<12} {score:8.4f}" + (f"  {title}" if title is not None else ""))
        if args.explain:
            because = doc["items"][rank - args.offset - 1].get("because") or []
            print("       because of " + (", ".join(f"{r['item']} ({r['share']:.0%})" if r["share"] is not None
                                                 else r["item"] for r in because) or "nothing in the history")
                  + f" [{doc['explanation']}]")
    return 0


def _recommendation_header(args: argparse.Namespace, fallback: bool, history: list | None) -> str:
    if args.user is None:
        who = f"a history of {len(history)} items"
        note = " (fallback: no item the model knows, so the most popular items)" if fallback else ""
    else:
        who = f"user {args.user}"
        note = " (fallback: unknown user without feedback, so the most popular items; scores are user counts)" \
            if fallback else f" ({len(history)} stored feedback events folded in)" if history else ""
    return f"Top {args.k} for {who}{note}" + (f", after the first {args.offset}" if args.offset else "") + ":"


def _stored_feedback(url: str, user: str) -> list[tuple[str, float]]:
    """The user's feedback events in the database at `url` (as the service's FEEDBACK_DB_URL), oldest first."""
    from .feedback import FeedbackStore

    return FeedbackStore(url, no_history_cache=0).history(user)


def cmd_similar(args: argparse.Namespace) -> int:
    engine = _engine(args.bundle)
    ids, scores = engine.similar_items([args.item], args.k)
    titles = engine.catalogue.titles(np.array([args.item], dtype=object))
    name = f" ({titles[0]})" if titles is not None and titles[0] is not None else ""
    print(f"Items similar to {args.item}{name}:")
    _print_ranked(ids[0], scores[0], engine.catalogue.titles(ids[0]))
    return 0


def cmd_recommend_all(args: argparse.Namespace) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm.auto import tqdm

    engine = _engine(args.bundle)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    schema = pa.schema([("user", pa.string()), ("item", pa.string()), ("rank", pa.int32()), ("score", pa.float32())])
    rows, writer, n_users = 0, None, len(engine.users)
    batches = engine.recommend_batches(args.k, exclude_seen=not args.include_seen, batch_size=args.batch_users)
    try:
        with tqdm(total=n_users, unit="user", desc="recommend-all", disable=args.quiet) as bar:
            for frame in batches:  # streamed: one batch of users in memory at a time
                table = pa.Table.from_pandas(frame, schema=schema, preserve_index=False)  # also an empty batch
                writer = writer or pq.ParquetWriter(tmp, schema)
                writer.write_table(table)
                rows += len(frame)
                bar.update(min(args.batch_users, n_users - bar.n))
        if writer is None:
            raise DataValidationError(f"The bundle {args.bundle} has no users to recommend for.")
        writer.close()
        writer = None
        tmp.replace(out)  # the file appears whole or not at all
    finally:
        if writer is not None:
            writer.close()
        if tmp.exists():
            tmp.unlink()
    print(f"Wrote {rows:,} rows ({len(engine.users):,} users x top {args.k}) to {out}")
    return 0


def cmd_add_items(args: argparse.Namespace) -> int:
    from .additions import NewItem, save_with_items
    from .data import read_table

    items = read_table(args.items, sep=args.sep, id_cols=[args.items_id_col])
    pairs: dict[str, list[tuple[str, float]]] = {}
    if args.data:
        columns = [args.user_col, args.item_col, *([args.weight_col] if args.weight_col else [])]
        events = read_table(args.data, sep=args.sep, id_cols=columns)
        weights = events[args.weight_col].astype(float) if args.weight_col else pd.Series(1.0, index=events.index)
        for user, item, weight in zip(events[args.user_col], events[args.item_col], weights):
            pairs.setdefault(str(item), []).append((str(user), float(weight)))
    attributes = items.drop(columns=[args.items_id_col]).to_dict("records")
    new = [NewItem(str(i), a, pairs.get(str(i), [])) for i, a in zip(items[args.items_id_col], attributes)]
    out = save_with_items(args.bundle, new)
    print(f"Added {len(new)} item(s) without retraining: wrote {out}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    manifest = verify(args.bundle)
    if args.json:
        print(json.dumps({k: v for k, v in manifest.to_dict().items() if k not in ("files", "training")}, indent=2))
        return 0
    print(f"Bundle:        {resolve(args.bundle)}  (checksums OK)")
    print(f"Model:         {manifest.model_class}  {json.dumps(manifest.params)}")
    print(f"Created:       {manifest.created_at} with recsys {manifest.recsys_version}")
    print(f"Dimensions:    {manifest.n_users:,} users, {manifest.n_items:,} items, {manifest.factors} factors")
    training = manifest.training
    if "best_epoch" in training:
        print(f"Training:      {training.get('epochs_run')} epochs in {training.get('train_seconds')} s "
              f"on {training.get('device')}")
    for metric, st in manifest.index_measured.items():
        verdict = "kept" if st.get("kept") else "not kept: exact search is faster or recall short"
        print(f"Index {metric:<8} {st.get('kind', 'annoy')} {describe(st)}: "
              f"recall@{st['k']}={st['recall']:.3f}, "
              f"{st['ann_ms']:.3f} ms/query vs exact {st['exact_ms']:.3f} ms ({st['speedup']:.2f}x), {verdict}")
    print("Metrics:       " + ", ".join(f"{k}={v:.4f}" for k, v in manifest.metrics.items() if k != "users"))
    files = ", ".join(f"{name} ({info['bytes']:,} B)" for name, info in manifest.files.items())
    print(f"Files:         {files}")
    return 0


def cmd_drift(args: argparse.Namespace) -> int:
    """Compare two bundles (`recsys.drift`); exit 1 when a threshold is crossed (a CI gate), else 0."""
    from .data import read_table
    from .drift import drift

    data = None
    if args.data:
        data = read_table(args.data, sep=args.sep, id_cols=[args.user_col, args.item_col])
        data = data.rename(columns={args.user_col: "user", args.item_col: "item"})[["user", "item"]]
    thresholds = {}
    for text in args.threshold:
        name, _, value = text.partition("=")
        try:
            thresholds[name.strip()] = float(value)
        except ValueError:
            raise DataValidationError(f"--threshold {text!r}: write name=number, e.g. moved_share=0.2.") from None
    report = drift(resolve(args.bundle), resolve(args.against), k=args.k, max_items=args.max_items,
                   max_users=args.max_users, data=data, thresholds=thresholds, seed=args.seed)
    if args.json:
        print(json.dumps(report.to_dict(args.top), indent=2, default=str))
        return 1 if report.warnings else 0
    s, u = report.summary, report.users
    print(f"Items: {report.shared:,} shared, {len(report.added):,} added, {len(report.removed):,} removed")
    print(f"Item neighbourhoods (k={args.k}, {len(report.items):,} sampled): mean overlap "
          f"{s['mean_neighbour_overlap']:.3f}, {s['moved_share']:.1%} moved (overlap < 0.5), median displacement "
          f"after alignment {s['median_displacement']:.3f}")
    if u.get("users"):
        print(f"Users ({u['users']:,} sampled): top-{args.k} Jaccard {u['jaccard']:.3f}, RBO {u['rbo']:.3f}, top item "
              f"changed for {u['top_item_changed_share']:.1%}")
    for version, metrics in (report.metrics or {}).items():
        print(f"On --data, {version}: " + ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                                   for k, v in metrics.items()))
    print(f"\nMoved most:\n{report.moved(args.top).to_string(index=False, float_format=lambda v: f'{v:.3f}')}")
    for warning in report.warnings:
        print(f"WARNING: {warning}")
    return 1 if report.warnings else 0


def cmd_report(args: argparse.Namespace) -> int:
    """Online metrics per model version from the service's database (`recsys.online`)."""
    import datetime as dt

    from .online import compare_variants, online_report

    since = None
    if args.since:
        try:
            since = dt.datetime.fromisoformat(args.since).replace(tzinfo=dt.timezone.utc)
        except ValueError:
            raise DataValidationError(f"--since {args.since!r} is not a date: write 2026-12-01 or "
                                      "2026-12-01T08:00.") from None
    table = online_report(args.db, since=since, horizon_s=args.horizon_hours * 3600)
    variants = set(table["variant"].dropna())
    compared = compare_variants(args.db, baseline=min(variants), since=since, horizon_s=args.horizon_hours * 3600) \
        if len(variants) > 1 else None
    if args.json:
        print(json.dumps({"versions": json.loads(table.to_json(orient="records")),
                          "variants": None if compared is None else json.loads(compared.to_json(orient="records"))},
                         indent=2))
    elif table.empty:
        print("No served answers recorded" + (f" since {args.since}" if args.since else "") +
              " (the service records RECSYS_RECORD_RATE of its answers).")
    else:
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        for row in ([] if compared is None else compared.itertuples()):
            verdict = "differs" if row.low > 0 or row.high < 0 else "no difference shown"
            print(f"Variant {row.variant} - {row.baseline}, hit rate: {row.difference:+.4f} (95 % interval "
                  f"[{row.low:+.4f}, {row.high:+.4f}]; {row.lists:,} and {row.baseline_lists:,} lists): {verdict}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Start the REST service in a new process image (recsys never imports the server or flask)."""
    import os
    import shutil

    path = resolve(args.bundle)
    verify(path)  # refuse a corrupt bundle before starting anything
    env = {**os.environ, "RECSYS_BUNDLE": str(Path(args.bundle).resolve()),
           "RECSYS_BIND": f"{args.host}:{args.port}"}
    if args.workers is not None:
        env["RECSYS_WORKERS"] = str(args.workers)
    root = Path(__file__).resolve().parents[1]
    if args.dev:
        argv = [sys.executable, "-m", "flask", "--app", "server:create_app()", "run", "--host", args.host,
                "--port", str(args.port)]
    else:
        gunicorn = shutil.which("gunicorn", path=str(Path(sys.executable).parent)) or "gunicorn"
        argv = [gunicorn, "-c", str(root / "server" / "gunicorn.conf.py")]
    print(f"Serving {path} on http://{args.host}:{args.port} (docs: /docs)", flush=True)
    os.chdir(root)
    os.execvpe(argv[0], argv, env)
    return 0  # not reached


# ---------------------------------------------------------------------------------------------- parser
def data_args(parser: argparse.ArgumentParser) -> None:
    """Where the interactions come from and how they are held out (shared by train and tune)."""
    parser.add_argument("--data", help="interaction log: .csv, .tsv or .parquet (default: bundled ml-latest-small)")
    parser.add_argument("--user-col", default="user", help="user id column (default: user)")
    parser.add_argument("--item-col", default="item", help="item id column (default: item)")
    parser.add_argument("--time-col", default=None, help="timestamp column: Unix seconds or ISO dates")
    parser.add_argument("--weight-col", default=None, help="weight or rating column (default: every row counts 1)")
    parser.add_argument("--items", default=None, help="optional CSV of item metadata (title, genres, ...)")
    parser.add_argument("--items-id-col", default="item", help="item id column in --items (default: item)")
    parser.add_argument("--title-col", default=None, help="the --items column that names an item (default: title, "
                                                          "else name, product_name, ... when present)")
    parser.add_argument("--sep", default=None, help="the delimiter of --data and --items text files (default: "
                                                    "detected among , ; tab |)")
    parser.add_argument("--duplicates", choices=["sum", "max", "last"], default="sum",
                        help="how repeated (user, item) rows combine (default: sum)")
    parser.add_argument("--drop-bad-rows", action="store_true", help="drop invalid rows instead of failing")
    parser.add_argument("--catalog", choices=["interactions", "metadata"], default="interactions",
                        help="which items get an index: those with interactions (default) or every item of "
                             "--items too (the two_tower model embeds items without interactions from features)")
    parser.add_argument("--test-fraction", type=float, default=0.2, help="held-out share per user (default: 0.2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="recsys", description="Train, evaluate and query recommendation models.")
    p.add_argument("--version", action="version", version=f"recsys {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train a model and write a versioned bundle",
                       description="Train on the bundled MovieLens data (default) or --data PATH; evaluate on "
                                   "each user's latest interactions; write a bundle under --out and point "
                                   "OUT/current at it.")
    data_args(t)
    t.add_argument("--from-db", metavar="URL", default=None,
                   help="also train on feedback events stored by the service (a database URL such as "
                        "sqlite:///instance/feedback.db)")
    t.add_argument("--model", default="auto", choices=["auto", *MODEL_NAMES],
                   help="model to train; auto (default): the best model on the validation split among "
                        "popularity, the spectral filter, EASE (where affordable), iALS, MF and two-tower "
                        "(closed-form models by a fixed number of trials, the others at their defaults "
                        "within an epoch bound)")
    t.add_argument("--params", metavar="JSON", default=None,
                   help="model parameters: a JSON file (such as `recsys tune --out` writes) or inline JSON")
    t.add_argument("--tune", action="store_true", help="search the model's hyper-parameters with Optuna on a "
                                                       "validation split first (recsys tune)")
    t.add_argument("--tune-budget", type=float, default=None, metavar="SECONDS",
                   help="seconds of search for --tune (default: 60 + 1 per 300 interactions, at most "
                        f"{MAX_BUDGET:.0f}; 393 for 100k interactions)")
    t.add_argument("--epochs", type=int, default=None, help="maximum epochs (early stopping picks fewer)")
    t.add_argument("--factors", type=int, default=None, help="embedding size")
    t.add_argument("--loss", choices=["softmax", "sampled", "bpr"], default=None, help="MF training loss")
    t.add_argument("--item-text-cols", metavar="COLS", default=None,
                   help="--items columns (e.g. name,description) read by the pretrained sentence encoder (the text "
                        "extra) as one more two-tower feature; new items with text only are placed by it")
    t.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda or mps")
    t.add_argument("--no-refit", action="store_true", help="bundle the evaluated model instead of refitting "
                                                          "on all interactions")
    t.add_argument("--no-index", action="store_true", help="skip building the Annoy indexes")
    t.add_argument("--target-recall", type=float, default=0.95,
                   help="recall@10 against exact search the indexes are tuned to (default: 0.95)")
    t.add_argument("--out", default="models", help="models root; the bundle is a new version in it (default: "
                                                   "models)")
    t.set_defaults(func=cmd_train)

    u = sub.add_parser("tune", help="search a model's hyper-parameters (Optuna) on a validation split",
                       description="Hold out each user's latest --test-fraction (never used here), carve a "
                                   "validation split from the rest the same way, and search the model's "
                                   "hyper-parameters on it within --budget seconds.")
    data_args(u)
    u.add_argument("--model", default="auto", choices=["auto", *MODEL_NAMES],
                   help="model to tune; auto (default): the closed-form models (popularity, spectral, "
                        "EASE) by a fixed number of trials, then iALS first, the other embedding models while "
                        "they can still win")
    u.add_argument("--budget", type=float, default=None, metavar="SECONDS",
                   help="seconds of search (default: as recsys train --tune, by the size of the log); a running "
                        "trial finishes")
    u.add_argument("--trials", type=_positive_int, default=None, help="stop after this many trials per model")
    u.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda or mps")
    u.add_argument("--out", default=None, metavar="JSON",
                   help="write the result here; `recsys train --model M --params FILE` trains with it")
    u.set_defaults(func=cmd_tune)

    def bundle_arg(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--bundle", required=True, help="bundle directory, or a models root with 'current'")

    e = sub.add_parser("evaluate", help="show a bundle's held-out metrics beside its baselines")
    bundle_arg(e)
    e.add_argument("--json", action="store_true", help="print the model's metrics as JSON")
    e.set_defaults(func=cmd_evaluate)

    r = sub.add_parser("recommend", help="top-k items for a user, or for a history of items (as the service "
                                         "answers GET /v1/users/<id>/recommendations)")
    bundle_arg(r)
    who = r.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", help="a user id; one the bundle does not know (and without stored feedback) "
                                    "gets the most popular items, marked as the fallback")
    who.add_argument("--history", help="comma-separated item ids, for a user the bundle has not seen")
    r.add_argument("--k", type=_positive_int, default=10)
    r.add_argument("--offset", type=int, default=0, help="skip this many of the best items (paging)")
    r.add_argument("--exclude", action="append", default=[], metavar="ITEMS",
                   help="item ids to leave out (repeat, or a comma-separated list; unknown ids are ignored)")
    r.add_argument("--include-seen", action="store_true", help="do not exclude the user's known items")
    r.add_argument("--genre", action="append", help="only items with this genre (repeat for any of several)")
    r.add_argument("--genre-col", default="genres", help=argparse.SUPPRESS)
    r.add_argument("--filter", action="append", default=[], metavar="EXPR",
                   help="an item attribute filter, all must hold (repeat): attribute:value (or value,value for "
                        "any of several), attribute<=number or attribute>=number; e.g. category:shoes, price<=100")
    r.add_argument("--feedback-db", metavar="URL", default=None,
                   help="fold in the user's feedback events stored in this database (SQLAlchemy URL, as the "
                        "service's RECSYS_FEEDBACK_DB_URL, e.g. sqlite:///feedback.db)")
    r.add_argument("--explain", action="store_true",
                   help="add to each item the history items that contributed most to its score")
    r.add_argument("--json", action="store_true", help="print the answer as the service's JSON document")
    r.set_defaults(func=cmd_recommend)

    s = sub.add_parser("similar", help="the items nearest to an item")
    bundle_arg(s)
    s.add_argument("--item", required=True, help="an item id known to the bundle")
    s.add_argument("--k", type=_positive_int, default=10)
    s.set_defaults(func=cmd_similar)

    a = sub.add_parser("recommend-all", help="top-k for every user to a Parquet file (user, item, rank, score)")
    bundle_arg(a)
    a.add_argument("--out", required=True, help="output .parquet file")
    a.add_argument("--k", type=_positive_int, default=10)
    a.add_argument("--include-seen", action="store_true")
    a.add_argument("--batch-users", type=_positive_int, default=4096,
                   help="users scored at once (memory: batch x catalogue scores; default 4096)")
    a.add_argument("--quiet", action="store_true", help="no progress bar")
    a.set_defaults(func=cmd_recommend_all)

    v = sub.add_parser("serve", help="start the REST service (gunicorn; --dev for Flask's server)")
    bundle_arg(v)
    v.add_argument("--host", default="127.0.0.1")
    v.add_argument("--port", type=int, default=8000)
    v.add_argument("--workers", type=_positive_int, default=None,
                   help="gunicorn worker processes (default: two per CPU, server/gunicorn.conf.py)")
    v.add_argument("--dev", action="store_true", help="Flask's development server (one process, reloads)")
    v.set_defaults(func=cmd_serve)

    n = sub.add_parser("add-items", help="add items to a bundle without retraining (a new version, published)",
                       description="Give each new item a vector by the model's own rule (from its interactions "
                                   "in --data, else from its text columns) and write a new bundle version.")
    n.add_argument("--bundle", default="models", help="a models root (its current bundle) or a bundle directory")
    n.add_argument("--items", required=True, help="CSV/Parquet of the new items: an id column and attributes")
    n.add_argument("--items-id-col", default="item", help="the id column of --items (default: item)")
    n.add_argument("--data", default=None, help="CSV/Parquet of the new items' interactions")
    n.add_argument("--user-col", default="user", help="the user column of --data (default: user)")
    n.add_argument("--item-col", default="item", help="the item column of --data (default: item)")
    n.add_argument("--weight-col", default=None, help="the weight column of --data (default: every row 1)")
    n.add_argument("--sep", default=None, help="the files' delimiter (default: detected)")
    n.set_defaults(func=cmd_add_items)

    d = sub.add_parser("drift", help="what moved between two bundles: items, neighbourhoods, users' lists; exit 1 "
                                     "when a threshold is crossed",
                       description="Compare --bundle (the new version) with --against (the old one): items added and "
                                   "removed, each item's neighbours and aligned displacement, users' top-k lists, "
                                   "and with --data both versions' metrics on a log. Exit 1 when a threshold "
                                   "(recsys.drift.THRESHOLDS, or --threshold name=value) is crossed, else 0.")
    bundle_arg(d)
    d.add_argument("--against", required=True, help="the version to compare with (a bundle or a models root)")
    d.add_argument("--k", type=_positive_int, default=10, help="neighbours and list length (default: 10)")
    d.add_argument("--max-items", type=_positive_int, default=5000, help="items sampled (default: 5000)")
    d.add_argument("--max-users", type=_positive_int, default=1000, help="users sampled (default: 1000)")
    d.add_argument("--data", default=None, help="a log neither version trained on (e.g. the next window)")
    d.add_argument("--user-col", default="user")
    d.add_argument("--item-col", default="item")
    d.add_argument("--sep", default=None, help="--data's delimiter (default: detected)")
    d.add_argument("--threshold", action="append", default=[], metavar="NAME=VALUE",
                   help="override a warning threshold, e.g. moved_share=0.2 (repeatable)")
    d.add_argument("--top", type=_positive_int, default=10, help="items listed as moved most (default: 10)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=cmd_drift)

    o = sub.add_parser("report", help="online metrics per model version from the answers the service served",
                       description="From the service's database: per model version (and A/B variant), the lists "
                                   "served, hit rate and NDCG of each list against its user's later events, "
                                   "coverage, the share of fallback answers and of lists named by a feedback "
                                   "event's request_id.")
    o.add_argument("--db", required=True, metavar="URL", help="the service's database, e.g. sqlite:///feedback.db")
    o.add_argument("--since", default=None, help="only answers served from this date (UTC)")
    o.add_argument("--horizon-hours", type=float, default=168.0,
                   help="a list is judged by its user's events within this many hours (default: 168)")
    o.add_argument("--json", action="store_true")
    o.set_defaults(func=cmd_report)

    i = sub.add_parser("info", help="verify a bundle and summarise its manifest")
    bundle_arg(i)
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_info)
    return p


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an int >= 1, got {text!r}")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an int >= 1, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (RecsysError, FileNotFoundError, ValueError, KeyError) as e:
        print(f"recsys {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
