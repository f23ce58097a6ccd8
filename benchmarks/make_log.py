"""Write a generated interaction log (recsys.datasets.make_synthetic) as a CSV that `recsys train` reads, for
timing the command line at scale:

    .venv/bin/python benchmarks/make_log.py --out /tmp/log1m.csv      # 30k users x 40k items, ~1M rows
    /usr/bin/time -v .venv/bin/recsys train --data /tmp/log1m.csv --user-col user --item-col item \\
        --time-col timestamp --weight-col rating --out /tmp/models

Columns: user, item, rating (1-5), timestamp (Unix seconds).
"""
from __future__ import annotations

import argparse
import sys

from recsys.datasets import make_synthetic


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=30_000)
    p.add_argument("--items", type=int, default=40_000)
    p.add_argument("--per-user", type=float, default=33.0, help="mean interactions per user")
    p.add_argument("--factors", type=int, default=32, help="planted clusters")
    p.add_argument("--skew", type=float, default=0.9, help="power-law exponent of item popularity")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", required=True, help="CSV path")
    args = p.parse_args(argv)
    frame = make_synthetic(n_users=args.users, n_items=args.items, n_factors=args.factors,
                           interactions_per_user=args.per_user, popularity_skew=args.skew, seed=args.seed).interactions
    frame["timestamp"] = frame["timestamp"].astype("int64") // 10**9
    frame.to_csv(args.out, index=False)
    print(f"{args.out}: {len(frame):,} interactions, {frame.user.nunique():,} users, {frame.item.nunique():,} items")
    return 0


if __name__ == "__main__":
    sys.exit(main())
