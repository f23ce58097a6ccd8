"""Serving benchmark: the recommendations endpoint under gunicorn against a bare Flask endpoint, same run.

One run:
  * makes sure there is a bundle: trains one on the bundled MovieLens data into a temporary directory
    (`recsys train --out TMP --quiet`, about 35 s) unless --bundle DIR is given;
  * starts gunicorn with the service's own settings (`-c server/gunicorn.conf.py`: gthread workers,
    preload_app; the same RECSYS_WORKERS / RECSYS_THREADS for both, a free port on 127.0.0.1, the feedback
    store in a temporary sqlite file) twice (three times with --uncached), one after the other:
      (a) the recsys app serving the bundle: GET /v1/users/<id>/recommendations?k=10, ids "1".."610"
          (every MovieLens user, cycled);
      (b) `benchmarks/bare_app.py`: a minimal Flask app answering the same route with a static JSON
          document of the same shape and size;
      (c) with --uncached, the recsys app again with its response cache and its feedback-store memory
          off (RECSYS_RESPONSE_CACHE_BYTES=0, RECSYS_NO_FEEDBACK_CACHE_SIZE=0): every request queries the
          feedback table, scores the user and serialises the answer (informational: what a cache miss
          costs; (a) answers a repeated user from its cache once the warm-up has seen them);
  * for each: waits for /readyz (bounded), checks a few answers, warms up (--warmup s, not recorded), then
    drives it for --duration seconds with --connections keep-alive connections (wrk with a Lua script when
    wrk is installed, else a Python thread generator) and records requests/s, latency percentiles, errors
    (non-2xx + socket errors + timeouts), bytes per answer and the server's CPU time per request;
  * prints the table, the ratios and the issue's targets (PASS / FAIL), and writes
    benchmarks/results/serving.json and benchmarks/results/serving.md (the printed output).

With --traffic zipf the load is realistic rather than best-case: the benchmark generates a log of
--zipf-users users (100,000) and trains an iALS bundle on it, then draws a request sequence whose users follow
a Zipf law over all of them (most users are seen once or never; a few come back often), and a --feedback-share
of the requests (2%) post a feedback event for the drawn user, whose later answers are computed afresh (folded
in) rather than cached. Every server (the bare one included, whose feedback route answers a static 201) serves
the same sequence; the table reports each run's response-cache hit share (the service's
recsys_response_cache_total counters), so "recommendations" is the mix of hits, misses and feedback users and
"uncached" (--uncached) is every answer computed.

    .venv/bin/python benchmarks/serving.py                      # train a bundle, 20 s per endpoint
    .venv/bin/python benchmarks/serving.py --duration 60        # the acceptance run
    .venv/bin/python benchmarks/serving.py --duration 60 --rounds 2 --uncached   # the committed run
    .venv/bin/python benchmarks/serving.py --bundle models --duration 10 --out /tmp/s.json
    .venv/bin/python benchmarks/serving.py --traffic zipf --uncached --duration 30   # realistic traffic

Latencies are those of a closed-loop generator (each connection sends its next request when the previous
answer arrives), measured from the client, on the same machine as the server: the generator's CPU is
taken from the server's cores and is reported.
"""
from __future__ import annotations

import argparse
import collections
import datetime as dt
import http.client
import importlib.metadata
import json
import logging
import os
import platform
import re
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
from recsys import service as serving_process
from recsys.service import children, free_port, get

BIN = Path(sys.executable).parent
CONF = "server/gunicorn.conf.py"
N_USERS = 610  # MovieLens ml-latest-small users "1".."610"
ROUTE = "/v1/users/{user}/recommendations?k={k}"
SESSION_ROUTE = "/v1/sessions/recommendations"
TICKS = os.sysconf("SC_CLK_TCK")
API_KEY = "serving-benchmark"  # RECSYS_API_KEYS of the servers: the feedback posts of --traffic zipf send it
POST_HEADERS = {"Content-Type": "application/json", "X-API-Key": API_KEY}

log = logging.getLogger("benchmarks.serving")

APPS = {
    "recommendations": {"app": None, "what": "recsys app (server:create_app(), the config's wsgi_app)"},
    "bare": {"app": "benchmarks.bare_app:create_app()", "what": "bare Flask app, static JSON document"},
    # --uncached: the same app with both serving caches off, so every request is computed (informational)
    "uncached": {"app": None, "what": "recsys app with RECSYS_RESPONSE_CACHE_BYTES=0 and "
                 "RECSYS_NO_FEEDBACK_CACHE_SIZE=0 (and RECSYS_RECORD_RATE=0: nothing recorded)",
                 "env": {"RECSYS_RESPONSE_CACHE_BYTES": "0", "RECSYS_NO_FEEDBACK_CACHE_SIZE": "0",
                         "RECSYS_RECORD_RATE": "0"}},
    # --recorded RATE: uncached with that share of its answers recorded in the feedback database (server.recording;
    # the rate is set in main)
    "recorded": {"app": None, "what": "the uncached app recording a share of its answers (RECSYS_RECORD_RATE)",
                 "env": {"RECSYS_RESPONSE_CACHE_BYTES": "0", "RECSYS_NO_FEEDBACK_CACHE_SIZE": "0"}},
    # --versus BUNDLE: the uncached app serving another bundle (a SASRec beside an iALS), the same requests
    "versus": {"app": None, "what": "the uncached app serving the --versus bundle",
               "env": {"RECSYS_RESPONSE_CACHE_BYTES": "0", "RECSYS_NO_FEEDBACK_CACHE_SIZE": "0",
                       "RECSYS_RECORD_RATE": "0"}},
    # --explained: every recommendations request with explain=true (computed afresh, never cached)
    "explained": {"app": None, "what": "recsys app, each recommendations request with &explain=true",
                  "query": "&explain=true"},
}


def requests_for(args: argparse.Namespace, name: str) -> list[tuple[str, str, str]]:
    """The run's requests as endpoint `name` is sent them (its APPS 'query' appended to every GET)."""
    query = APPS[name].get("query", "")
    return [(m, p + query if m == "GET" else p, b) for m, p, b in args.requests] if query else args.requests

# Every wrk thread walks the same request sequence (one line per request of the traffic file: "GET path" or
# "POST path body") from its own starting point; requests are formatted once, in init
LUA = r"""
local path_file, api_key = "TRAFFIC_FILE", "API_KEY"
local reqs, n, counter, non2xx = {}, 0, 0, 0
local threads, next_id = {}, 0

function setup(thread)
  thread:set("tid", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

function init(args)
  local headers = {["Content-Type"] = "application/json", ["X-API-Key"] = api_key}
  for line in io.lines(path_file) do
    local method, path, body = line:match("^(%u+) (%S+) ?(.*)$")
    n = n + 1
    if method == "POST" then
      reqs[n] = wrk.format("POST", path, headers, body)
    else
      reqs[n] = wrk.format("GET", path)
    end
  end
  counter = math.floor((tid or 0) * n / 7)
end

function request()
  counter = counter + 1
  return reqs[(counter % n) + 1]
end

function response(status, headers, body)
  if status < 200 or status > 299 then non2xx = non2xx + 1 end
end

function done(summary, latency, requests)
  local bad = 0
  for _, t in ipairs(threads) do bad = bad + (t:get("non2xx") or 0) end
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "bytes": %d, "non2xx": %d, "connect": %d, "read": %d, ' ..
    '"write": %d, "status": %d, "timeout": %d, "mean_us": %f, "stdev_us": %f, "min_us": %d, "max_us": %d, ' ..
    '"p50_us": %d, "p90_us": %d, "p99_us": %d, "p999_us": %d}\n',
    summary.requests, summary.duration, summary.bytes, bad, e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.stdev, latency.min, latency.max, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9)))
end
"""


# ------------------------------------------------------------------------------------------- helpers
def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of the processes (their own threads; reaped children not included)."""
    total = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        total += int(fields[11]) + int(fields[12])
    return total / TICKS


def child_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# ------------------------------------------------------------------------------------------ the bundle
def train_bundle(tmp: Path, timeout: float) -> Path:
    out = tmp / "models"
    cmd = [str(BIN / "recsys"), "train", "--out", str(out), "--quiet"]
    log.info("training a bundle: %s", " ".join(cmd))
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, timeout=timeout, stdin=subprocess.DEVNULL,
                   stdout=sys.stderr)  # its summary is progress, not the report
    log.info("trained in %.1f s", time.perf_counter() - start)
    return out


def generated_bundle(tmp: Path, args: argparse.Namespace) -> Path:
    """--traffic zipf without --bundle: a log of --zipf-users users (recsys.datasets.make_synthetic: planted
    clusters, power-law item popularity, timestamps) trained with `recsys train --model ials`."""
    from recsys.datasets import make_synthetic

    start = time.perf_counter()
    frame = make_synthetic(n_users=args.zipf_users, n_items=args.zipf_items, n_factors=32,
                           interactions_per_user=args.per_user, popularity_skew=0.9, seed=args.seed).interactions
    frame["timestamp"] = frame["timestamp"].astype("int64") // 10**9
    csv = tmp / "log.csv"
    frame.to_csv(csv, index=False)
    log.info("generated %s: %d interactions, %d users, %d items in %.1f s", csv, len(frame), frame.user.nunique(),
             frame.item.nunique(), time.perf_counter() - start)
    out = tmp / "models"
    cmd = [str(BIN / "recsys"), "train", "--data", str(csv), "--time-col", "timestamp", "--weight-col", "rating",
           "--model", "ials", "--out", str(out), "--quiet"]
    log.info("training a bundle: %s", " ".join(cmd))
    subprocess.run(cmd, cwd=ROOT, check=True, timeout=args.train_timeout, stdin=subprocess.DEVNULL,
                   stdout=sys.stderr)
    log.info("generated and trained in %.1f s", time.perf_counter() - start)
    return out


Request = tuple[str, str, str]  # (method, path, body)


def cycle_requests(k: int) -> list[Request]:
    """--traffic cycle: every MovieLens user in turn, no feedback (every answer is cached after the first)."""
    return [("GET", ROUTE.format(user=u, k=k), "") for u in range(1, N_USERS + 1)]


def session_requests(k: int, length: int = 10) -> list[Request]:
    """--traffic sessions: for every MovieLens user in turn, an anonymous session of their last `length` items in
    time order (POST /v1/sessions/recommendations): every answer folds a history in (a SASRec runs its encoder)."""
    from recsys.data import read_interactions, user_histories
    from recsys.datasets import load_movielens

    inter = read_interactions(load_movielens().interactions, time_col="timestamp")
    indptr, items = user_histories(inter)
    bodies = [json.dumps({"items": inter.items.ids[items[indptr[u]:indptr[u + 1]][-length:]].tolist(), "k": k},
                         separators=(",", ":")) for u in range(inter.n_users)]
    return [("POST", SESSION_ROUTE, body) for body in bodies]


def zipf_requests(bundle: Path, args: argparse.Namespace) -> tuple[list[Request], dict]:
    """--traffic zipf: --sequence requests whose users are drawn from a Zipf law (exponent --zipf-exponent)
    over every user of the bundle, in a random order of popularity; a --feedback-share of them are feedback
    events (POST /v1/feedback, one random catalogue item) for the drawn user, whose later answers are then
    computed afresh (folded in). Returns the requests and what they hold."""
    import urllib.parse

    import numpy as np

    from recsys.bundle import read_bundle, resolve

    b = read_bundle(resolve(bundle))
    users, items = b.users.ids, b.items.ids
    rng = np.random.default_rng(args.seed)
    p = np.arange(1, len(users) + 1, dtype=np.float64) ** -args.zipf_exponent
    drawn = rng.permutation(len(users))[rng.choice(len(users), size=args.sequence, p=p / p.sum())]
    post = rng.random(args.sequence) < args.feedback_share
    requests: list[Request] = []
    with_feedback: set[int] = set()
    seen: set[int] = set()
    repeats = after_feedback = 0
    for u, is_post in zip(drawn.tolist(), post.tolist()):
        if is_post:
            event = {"user": str(users[u]), "item": str(items[rng.integers(len(items))])}
            requests.append(("POST", "/v1/feedback", json.dumps({"events": [event]}, separators=(",", ":"))))
            with_feedback.add(u)
            continue
        repeats += u in seen
        after_feedback += u in with_feedback
        seen.add(u)
        requests.append(("GET", ROUTE.format(user=urllib.parse.quote(str(users[u]), safe=""), k=args.k), ""))
    gets = len(requests) - int(post.sum())
    facts = {"bundle_users": len(users), "bundle_items": len(items), "requests": len(requests),
             "feedback_posts": int(post.sum()), "distinct_users": len(seen),
             "repeat_share": repeats / max(gets, 1),
             "after_feedback_share": after_feedback / max(gets, 1)}
    return requests, facts


# ------------------------------------------------------------------------------------------- gunicorn
class Server:
    """One gunicorn master (and its workers) on a free loopback port; output goes to a log file."""

    def __init__(self, name: str, args: argparse.Namespace, bundle: Path, tmp: Path):
        self.name = name
        self.port = free_port()
        work = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=tmp))  # one per server start
        self.log_path = work / "gunicorn.log"
        metrics_dir = work / "prometheus"
        metrics_dir.mkdir()
        env = serving_process.environment()
        env.update({
            "RECSYS_BIND": f"127.0.0.1:{self.port}",
            "RECSYS_WORKERS": str(args.workers),
            "RECSYS_THREADS": str(args.threads),
            "RECSYS_BUNDLE": str(args.versus if name == "versus" else bundle),
            "RECSYS_FEEDBACK_DB_URL": f"sqlite:///{work / 'feedback.db'}",
            "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
            "RECSYS_API_KEYS": API_KEY,
        })
        env.update(args.server_env)  # what-if experiments, applied to both servers alike
        env.update(APPS[name].get("env", {}))
        if name == "recorded":
            env["RECSYS_RECORD_RATE"] = str(args.recorded)
        self.cmd = [str(BIN / "gunicorn"), "-c", CONF]
        app = args.recommendations_app if name != "bare" else APPS[name]["app"]
        if app:
            self.cmd.append(app)  # a command-line app overrides the config file's wsgi_app
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.check_paths = [path for method, path, _ in args.requests if method == "GET"][:3]

    def start(self, ready_timeout: float, k: int) -> dict:
        log.info("starting %s on 127.0.0.1:%d: %s", self.name, self.port, " ".join(self.cmd))
        started = time.perf_counter()
        self.proc = serving_process.start(self.cmd, self.env, log=self.log_path, stderr_to_log=True)
        serving_process.wait_ready(self.proc, self.port, ready_timeout, workers=1,
                                   name=f"gunicorn ({self.name})", log=self.log_path)
        ready_s = time.perf_counter() - started
        deadline = started + ready_timeout
        # every worker up (gunicorn forks them one by one), bounded by the same deadline
        n_workers = int(self.env["RECSYS_WORKERS"])
        while len(children(self.proc.pid)) < n_workers and time.perf_counter() < deadline:
            time.sleep(0.1)
        sizes, statuses = [], []
        for path in self.check_paths:
            status, body = get(self.port, path, timeout=10)
            statuses.append(status)
            sizes.append(len(body))
            if status != 200:
                raise RuntimeError(f"{self.name}: GET {path} answered {status}: {body[:300]!r}")
            doc = json.loads(body)
            if len(doc.get("items", [])) != k and self.name != "bare":
                raise RuntimeError(f"{self.name}: expected {k} items, got {len(doc.get('items', []))}")
        log.info("%s ready in %.1f s, workers %s", self.name, ready_s, self.workers())
        return {"ready_s": round(ready_s, 2), "sample_body_bytes": sizes}

    def workers(self) -> list[int]:
        return children(self.proc.pid) if self.proc else []

    def log_counts(self) -> dict:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return {"booted_workers": text.count("Booting worker"),
                "worker_timeouts": text.count("WORKER TIMEOUT"), "tracebacks": text.count("Traceback")}

    def stop(self, timeout: float = 30) -> None:
        if self.proc and self.proc.poll() is None:
            serving_process.stop(self.proc, timeout=timeout)  # SIGTERM to master and workers; SIGKILL after the timeout


# ----------------------------------------------------------------------------------- load generators
def run_wrk(port: int, args: argparse.Namespace, duration: float, tmp: Path, name: str) -> dict:
    script, traffic = tmp / "traffic.lua", tmp / f"traffic-{name}.txt"
    if not traffic.exists():
        traffic.write_text("".join(" ".join(x for x in r if x) + "\n" for r in requests_for(args, name)))
    script.write_text(LUA.replace("TRAFFIC_FILE", str(traffic)).replace("API_KEY", API_KEY))
    cmd = ["wrk", f"-t{args.wrk_threads}", f"-c{args.connections}", f"-d{duration:g}s",
           f"--timeout={args.request_timeout:g}s", "-s", str(script), f"http://127.0.0.1:{port}"]
    before = child_cpu()
    r = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=duration + 60,
                       stdin=subprocess.DEVNULL)
    cpu = child_cpu() - before
    line = next((x for x in r.stdout.splitlines() if x.startswith("WRKJSON ")), None)
    if r.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    w = json.loads(line[len("WRKJSON "):])
    socket_errors = w["connect"] + w["read"] + w["write"] + w["timeout"]
    return {
        "requests": w["requests"], "seconds": w["duration_us"] / 1e6,
        "rps": w["requests"] / (w["duration_us"] / 1e6),
        "p50_ms": w["p50_us"] / 1000, "p90_ms": w["p90_us"] / 1000, "p99_ms": w["p99_us"] / 1000,
        "p999_ms": w["p999_us"] / 1000, "mean_ms": w["mean_us"] / 1000, "max_ms": w["max_us"] / 1000,
        "non2xx": w["non2xx"], "socket_errors": socket_errors, "errors": w["non2xx"] + socket_errors,
        "error_detail": {k: w[k] for k in ("connect", "read", "write", "timeout", "status")},
        "bytes_per_response": w["bytes"] / max(w["requests"], 1),  # headers included
        "loadgen_cpu_s": cpu, "loadgen": "wrk", "wrk_command": " ".join(cmd),
    }


def run_python(port: int, args: argparse.Namespace, duration: float, tmp: Path, name: str) -> dict:
    """Closed-loop keep-alive generator: one thread per connection (http.client). On a 2-core machine it
    competes with the server for CPU, and the GIL serialises the threads: prefer wrk."""
    lock = threading.Lock()
    latencies: list[float] = []
    counts = {"non2xx": 0, "socket_errors": 0, "bytes": 0}
    start_at = time.perf_counter() + 0.2
    stop_at = start_at + duration

    def worker(n: int) -> None:
        lat, non2xx, errs, nbytes = [], 0, 0, 0
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=args.request_timeout)
        requests = requests_for(args, name)
        i = n * len(requests) // max(args.connections, 1)
        while time.perf_counter() < start_at:
            time.sleep(0.01)
        while True:
            t0 = time.perf_counter()
            if t0 >= stop_at:
                break
            method, path, body = requests[i % len(requests)]
            i += 1
            try:
                if method == "POST":
                    conn.request("POST", path, body=body.encode(), headers=POST_HEADERS)
                else:
                    conn.request("GET", path)
                r = conn.getresponse()
                body = r.read()
                lat.append(time.perf_counter() - t0)
                nbytes += len(body)
                if not 200 <= r.status <= 299:
                    non2xx += 1
                if r.will_close:
                    conn.close()
            except (OSError, http.client.HTTPException):
                errs += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=args.request_timeout)
        conn.close()
        with lock:
            latencies.extend(lat)
            counts["non2xx"] += non2xx
            counts["socket_errors"] += errs
            counts["bytes"] += nbytes

    cpu0 = self_cpu()
    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(args.connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=duration + args.request_timeout + 30)
    cpu = self_cpu() - cpu0
    seconds = max(stop_at - start_at, 1e-9)
    lat = sorted(latencies)

    def pct(q: float) -> float:
        return lat[min(len(lat) - 1, int(q / 100 * len(lat)))] * 1000 if lat else float("nan")

    return {
        "requests": len(lat), "seconds": seconds, "rps": len(lat) / seconds,
        "p50_ms": pct(50), "p90_ms": pct(90), "p99_ms": pct(99), "p999_ms": pct(99.9),
        "mean_ms": statistics.fmean(lat) * 1000 if lat else float("nan"),
        "max_ms": lat[-1] * 1000 if lat else 0.0,
        "non2xx": counts["non2xx"], "socket_errors": counts["socket_errors"],
        "errors": counts["non2xx"] + counts["socket_errors"], "error_detail": {},
        "bytes_per_response": counts["bytes"] / max(len(lat), 1),  # bodies only
        "loadgen_cpu_s": cpu, "loadgen": "python",
    }


def cache_counts(port: int) -> dict[str, float]:
    """The service's recsys_response_cache_total counters by result (hit, miss, bypass); {} for the bare app."""
    status, body = get(port, "/metrics", timeout=10)
    counts: dict[str, float] = {}
    if status == 200:
        for line in body.decode().splitlines():
            if line.startswith("recsys_response_cache_total{"):
                counts[line.split('result="', 1)[1].split('"', 1)[0]] = float(line.rsplit(" ", 1)[1])
    return counts


def busiest_worker_share(log_path: Path, offset: int) -> float | None:
    """The share of the access-log lines after `offset` answered by the busiest worker (1 / workers when the
    connections are spread evenly): a keep-alive connection stays with the worker that accepted it."""
    with open(log_path, "rb") as f:
        f.seek(offset)
        workers = re.findall(rb'"worker": "<?(\d+)>?"', f.read())
    return max(collections.Counter(workers).values()) / len(workers) if workers else None


def measure(server: Server, args: argparse.Namespace, tmp: Path) -> dict:
    gen = run_wrk if args.loadgen == "wrk" else run_python
    if args.warmup > 0:
        gen(server.port, args, args.warmup, tmp, server.name)
    pids = [server.proc.pid, *server.workers()]
    load0 = os.getloadavg()
    cache0 = cache_counts(server.port)
    log0 = server.log_path.stat().st_size
    cpu0, t0 = cpu_seconds(pids), time.perf_counter()
    res = gen(server.port, args, args.duration, tmp, server.name)
    cpu1, t1 = cpu_seconds(pids), time.perf_counter()
    res["busiest_worker_share"] = busiest_worker_share(server.log_path, log0)
    cache = {key: value - cache0.get(key, 0.0) for key, value in cache_counts(server.port).items()}
    res["cache"] = {**cache, "hit_share": cache.get("hit", 0.0) / max(sum(cache.values()), 1.0)} if cache else None
    res["server_cpu_s"] = cpu1 - cpu0
    res["server_cpu_ms_per_request"] = (cpu1 - cpu0) / max(res["requests"], 1) * 1000
    res["server_cores_busy"] = (cpu1 - cpu0) / (t1 - t0)
    res["loadgen_cores_busy"] = res["loadgen_cpu_s"] / (t1 - t0)
    res["loadavg_before"] = load0
    res["loadavg_after"] = os.getloadavg()
    res["workers_at_end"] = len(server.workers())
    return res


# ------------------------------------------------------------------------------------------------ report
def fmt_table(rows: list[tuple]) -> list[str]:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    out = []
    for n, r in enumerate(rows):
        out.append("| " + " | ".join(str(c).rjust(widths[i]) if i else str(c).ljust(widths[i])
                                     for i, c in enumerate(r)) + " |")
        if n == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return out


def report(out: dict) -> str:
    a = out["args"]
    lines = [
        "# Serving benchmark: recommendations vs a bare Flask endpoint",
        "",
        f"command: {out['command']}",
        f"date: {out['date']}",
        (f"cpu_count: {out['machine']['cpu_count']}  ({out['machine']['processor']}, "
         f"{out['machine']['platform']})"),
        (f"python {out['machine']['python']}, gunicorn {out['machine']['gunicorn']}, "
        f"flask {out['machine']['flask']}"),
        (f"gunicorn: -c {CONF} (worker_class {out['gunicorn']['worker_class']}, preload_app "
        f"{out['gunicorn']['preload_app']}, timeout {out['gunicorn']['timeout']}), workers {a['workers']}, "
        f"threads {a['threads']}, bind 127.0.0.1:<free port>, access log to a file"),
        f"bundle: {out['bundle']}",
        *([f"extra server environment: {a['server_env']}"] if a["server_env"] else []),
        *([f"recommendations app: {a['recommendations_app']}"] if a["recommendations_app"] else []),
        (f"load: {out['loadgen_desc']}; {a['duration']:g} s per endpoint after {a['warmup']:g} s warm-up, "
        f"{a['connections']} connections, " + (
            f"GET /v1/users/<1..610>/recommendations?k={a['k']}" if a["traffic"] == "cycle" else
            f"POST {SESSION_ROUTE}, each MovieLens user's last 10 items in time order, k={a['k']}"
            if a["traffic"] == "sessions" else "traffic " + traffic_desc(out["traffic"], a))),
        *([f"versus bundle: {a['versus']}"] if a.get("versus") else []),
        (f"loadavg at start: {' '.join(f'{x:.2f}' for x in out['machine']['loadavg_start'])}; at end: "
        f"{' '.join(f'{x:.2f}' for x in out['machine']['loadavg_end'])}"),
        "",
    ]
    rows = [("endpoint", "requests", "req/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms", "errors",
             "bytes/resp", "server CPU ms/req", "server cores", "loadgen cores", "cache hits", "busiest worker")]
    for rnd in out["rounds"]:
        for name in out["endpoints"]:
            r = rnd[name]
            label = name if len(out["rounds"]) == 1 else f"{name} (round {rnd['round']})"
            rows.append((label, r["requests"], f"{r['rps']:.0f}", f"{r['p50_ms']:.2f}", f"{r['p90_ms']:.2f}",
                         f"{r['p99_ms']:.2f}", f"{r['p999_ms']:.2f}", f"{r['max_ms']:.1f}", r["errors"],
                         f"{r['bytes_per_response']:.0f}", f"{r['server_cpu_ms_per_request']:.3f}",
                         f"{r['server_cores_busy']:.2f}", f"{r['loadgen_cores_busy']:.2f}",
                         f"{r['cache']['hit_share']:.1%}" if r.get("cache") else "-",
                         f"{r['busiest_worker_share']:.0%}" if r.get("busiest_worker_share") else "-"))
    lines += fmt_table(rows)
    s = out["summary"]
    lines += [
        "",
        ("errors = non-2xx answers + socket errors (connect, read, write, timeout); bytes/resp: headers + "
         "body with wrk, body only with the Python generator; server CPU = user + system time of the "
         "gunicorn master and workers during the measured window; cores = CPU seconds / wall seconds; "
         "busiest worker = its share of the window's requests (25 % each when 4 workers share the "
         "connections evenly; a keep-alive connection stays with the worker that accepted it)."),
        "",
        (f"throughput ratio (recommendations / bare req/s): {s['throughput_ratio']:.3f}   target >= 0.7: "
        f"{'PASS' if s['throughput_pass'] else 'FAIL'}"),
        (f"p99 ratio (recommendations / bare p99):          {s['p99_ratio']:.3f}   target <= 2.0: "
        f"{'PASS' if s['p99_pass'] else 'FAIL'}"),
        f"server CPU per request ratio (recommendations / bare): {s['cpu_ratio']:.2f}",
        f"errors in the {a['duration']:g}-second runs: recommendations {s['recommendations_errors']}, "
        f"bare {s['bare_errors']}   target zero errors in a 60-second run: "
        + (("PASS" if s["zero_errors_pass"] else "FAIL") if a["duration"] >= 60 else "not tested (needs "
           "--duration 60)"),
    ]
    if "uncached" in s:
        u = s["uncached"]
        lines += ["", (f"uncached (both serving caches off, every answer computed): throughput ratio "
                       f"{u['throughput_ratio']:.3f}   target >= 0.5: {'PASS' if u['throughput_pass'] else 'FAIL'}"),
                  (f"uncached p99 ratio {u['p99_ratio']:.3f}   target <= 2.0: {'PASS' if u['p99_pass'] else 'FAIL'}"
                   f"; server CPU per request ratio {u['cpu_ratio']:.2f} (each against bare), {u['errors']} "
                   f"errors")]
    if "recorded" in s:
        r = s["recorded"]
        lines += ["", (f"recorded (RECSYS_RECORD_RATE={r['rate']:g} of the computed answers recorded): throughput "
                       f"{r['throughput_vs_uncached']:.3f} x uncached (recording off), CPU per request "
                       f"{r['cpu_vs_uncached']:.2f} x, {r['errors']} errors   target >= 0.95: "
                       f"{'PASS' if r['pass'] else 'FAIL'}")]
    if "explained" in s:
        lines += ["", beside_line("explained (explain=true, computed afresh)", s["explained"], "uncached")]
    if "versus" in s:
        lines += ["", beside_line(f"versus (the uncached app serving {s['versus']['bundle']})", s["versus"],
                                  "uncached (--bundle)")]
    for name in out["endpoints"]:
        c = {key: sum(r[name]["gunicorn_log"][key] for r in out["rounds"])
             for key in ("booted_workers", "worker_timeouts", "tracebacks")}
        lines.append(f"gunicorn log ({name}): {c['booted_workers']} worker boots, {c['worker_timeouts']} "
                     f"worker timeouts, {c['tracebacks']} tracebacks")
    if out["loadgen"] == "python":
        lines += ["", ("Caveat: the Python load generator runs on the same cores as the server (see "
                       "`loadgen cores`) and its GIL-bound threads add their own queueing to the latencies; "
                       "wrk is preferred.")]
    lines.append(f"\ntotal {out['total_s']:.0f} s")
    return "\n".join(lines)


def beside_line(label: str, e: dict, uncached: str) -> str:
    """One line of the report for an informational endpoint's figures (`beside` in main)."""
    return (f"{label}: throughput ratio {e['throughput_ratio']:.3f} against bare, p99 {e['p99_ms']:.2f} ms, server "
            f"CPU {e['cpu_ms_per_request']:.3f} ms per request, {e['errors']} errors") + (
        f"; against {uncached}: throughput {e['throughput_vs_uncached']:.3f}, CPU per request "
        f"{e['cpu_vs_uncached']:.2f}" if "cpu_vs_uncached" in e else "")


def traffic_desc(t: dict, a: dict) -> str:
    return (f"zipf (exponent {a['zipf_exponent']:g}) over the bundle's {t['bundle_users']:,} users: "
            f"{t['requests']:,} requests drawn, {t['distinct_users']:,} distinct users, "
            f"{t['feedback_posts']:,} feedback posts ({a['feedback_share']:.0%}); of the GETs, "
            f"{t['repeat_share']:.1%} repeat a user seen before, {t['after_feedback_share']:.1%} come after "
            f"that user's feedback (computed afresh)")


def gunicorn_settings() -> dict:
    ns: dict = {"__file__": str(ROOT / CONF)}
    old = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = old or "/nonexistent"  # the config only setdefault()s it
    try:
        exec(compile((ROOT / CONF).read_text(), CONF, "exec"), ns)  # noqa: S102 - the repository's own file
    finally:
        if old is None:
            os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return {k: ns.get(k) for k in ("worker_class", "preload_app", "timeout", "graceful_timeout", "wsgi_app",
                                   "workers", "threads")}


# -------------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path,
                   help="bundle dir or models root (default: train one into a temp dir)")
    p.add_argument("--duration", type=float, default=20.0, help="measured seconds per endpoint (default 20)")
    p.add_argument("--warmup", type=float, default=3.0, help="unrecorded seconds of load first (default 3)")
    p.add_argument("--connections", type=int, default=16,
                   help="concurrent keep-alive connections (default 16)")
    p.add_argument("--workers", type=int, default=None,
                   help="RECSYS_WORKERS for both servers (default: the config's own, two per CPU)")
    p.add_argument("--threads", type=int, default=None,
                   help="RECSYS_THREADS for both servers (default: the config's own, 2)")
    p.add_argument("--k", type=int, default=10, help="k in the query string (default 10)")
    p.add_argument("--rounds", type=int, default=1,
                   help="measure every endpoint this many times, alternating the order; ratios of the "
                        "medians (default 1: recommendations, then bare)")
    p.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto",
                   help="wrk when installed (auto), or the Python thread generator")
    p.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (default 1: leave the cores to "
                   "the server)")
    p.add_argument("--request-timeout", type=float, default=5.0, help="a slower answer counts as an error")
    p.add_argument("--ready-timeout", type=float, default=180.0, help="seconds to wait for /readyz")
    p.add_argument("--train-timeout", type=float, default=900.0)
    p.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE",
                   help="extra environment for both gunicorn servers (repeatable), e.g. "
                        "OPENBLAS_NUM_THREADS=1")
    p.add_argument("--recommendations-app", metavar="MODULE:CALL",
                   help="serve this app instead of the config's wsgi_app (server:create_app()) as (a), e.g. "
                        "a patched variant to measure a change; it must serve the same route")
    p.add_argument("--recorded", type=float, default=None, metavar="RATE",
                   help="with --uncached: also serve it recording this share of its answers (the service's "
                        "default RECSYS_RECORD_RATE is 0.1; 1 records every answer)")
    p.add_argument("--versus", type=Path, default=None, metavar="BUNDLE",
                   help="also the uncached app serving this bundle, the same requests (with --uncached: the "
                        "ratio of its throughput to --bundle's)")
    p.add_argument("--explained", action="store_true",
                   help="also serve every recommendations request with explain=true (compare with --uncached)")
    p.add_argument("--uncached", action="store_true",
                   help="also measure the recommendations app with its response cache and feedback-store "
                        "memory off (every request computed: feedback query, scoring, serialisation)")
    p.add_argument("--traffic", choices=("cycle", "zipf", "sessions"), default="cycle",
                   help="cycle: the MovieLens users 1..610 in turn, no feedback (default); zipf: users drawn from "
                        "a Zipf law over a larger bundle's users, some of them posting feedback; sessions: "
                        "anonymous sessions of each MovieLens user's last 10 items (every answer folds in)")
    p.add_argument("--zipf-users", type=int, default=100_000, help="zipf: users of the generated log")
    p.add_argument("--zipf-items", type=int, default=20_000, help="zipf: items of the generated log")
    p.add_argument("--per-user", type=float, default=20.0, help="zipf: mean interactions per user of the log")
    p.add_argument("--zipf-exponent", type=float, default=1.0, help="zipf: exponent of the users' request law")
    p.add_argument("--feedback-share", type=float, default=0.02,
                   help="zipf: share of the requests that are feedback events (default 0.02)")
    p.add_argument("--sequence", type=int, default=200_000, help="zipf: requests drawn (each thread walks them "
                   "from its own start)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None,
                   help="JSON path (default benchmarks/results/serving.json; serving_zipf.json with --traffic zipf)")
    p.add_argument("--md", type=Path, help="the printed output (default: --out with .md)")
    args = p.parse_args(argv)
    if args.loadgen == "auto":
        args.loadgen = "wrk" if shutil.which("wrk") else "python"
    try:
        args.server_env = dict(kv.split("=", 1) for kv in args.server_env)
    except ValueError:
        p.error("--server-env takes NAME=VALUE")
    settings = gunicorn_settings()
    args.workers = args.workers or settings["workers"]
    args.threads = args.threads or settings["threads"]
    if args.out is None:
        args.out = ROOT / "benchmarks/results" / ("serving_zipf.json" if args.traffic == "zipf" else "serving.json")
    if args.md is None:
        args.md = args.out.with_suffix(".md")
    if args.recorded is not None and not 0 < args.recorded <= 1:
        p.error("--recorded takes a rate in (0, 1]")
    if args.duration <= 0 or args.connections < 1 or args.rounds < 1:
        p.error("--duration, --connections and --rounds must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    args = parse_args(argv)
    started = time.perf_counter()
    out: dict = {
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "date": dt.datetime.now(dt.timezone.utc).astimezone().isoformat(timespec="seconds"),
        "machine": {"cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "platform": platform.platform(), "python": platform.python_version(),
                    "gunicorn": importlib.metadata.version("gunicorn"),
                    "flask": importlib.metadata.version("flask"), "loadavg_start": os.getloadavg()},
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "gunicorn": gunicorn_settings(),
        "loadgen": args.loadgen,
        "endpoints": ["recommendations", "bare", *(["uncached"] if args.uncached else []),
                      *(["recorded"] if args.recorded is not None and args.uncached else []),
                      *(["versus"] if args.versus else []), *(["explained"] if args.explained else [])],
        "rounds": [],
        "servers": {},
    }
    if args.loadgen == "wrk":
        version = subprocess.run(["wrk", "--version"], check=False, capture_output=True, text=True,
                                 timeout=10)
        name = (version.stdout or version.stderr).splitlines()[0].split(" Copyright")[0]
        walk = "cycling the users" if args.traffic == "cycle" else "walking the drawn requests"
        out["loadgen_desc"] = f"{name}, {args.wrk_threads} thread(s), Lua script {walk}"
    else:
        out["loadgen_desc"] = "Python threads (http.client keep-alive), one per connection"
    log.info("command: %s; cpu_count %s; load generator: %s", out["command"], os.cpu_count(),
             out["loadgen_desc"])
    tmp = Path(tempfile.mkdtemp(prefix="recsys-serving-"))
    servers: list[Server] = []
    try:
        if args.bundle:
            bundle = args.bundle.resolve()
        elif args.traffic == "zipf":
            bundle = generated_bundle(tmp, args)
        else:
            bundle = train_bundle(tmp, args.train_timeout)
        out["bundle"] = str(args.bundle) if args.bundle else (
            f"trained for this run on a generated log of {args.zipf_users:,} users x {args.zipf_items:,} items "
            f"(recsys train --model ials --quiet)" if args.traffic == "zipf" else
            "trained for this run (recsys train --quiet)")
        if args.traffic == "zipf":
            args.requests, out["traffic"] = zipf_requests(bundle, args)
            log.info("traffic: %s", out["traffic"])
        elif args.traffic == "sessions":
            args.requests = session_requests(args.k)
        else:
            args.requests = cycle_requests(args.k)
        for rnd in range(1, args.rounds + 1):
            result = {"round": rnd}
            order = out["endpoints"] if rnd % 2 else out["endpoints"][::-1]
            for name in order:  # alternate the order between rounds: the machine's load drifts
                server = Server(name, args, bundle, tmp)
                servers.append(server)
                try:
                    info = server.start(args.ready_timeout, args.k)
                    log.info("%s: %g s warm-up + %g s measured, %d connections (%s)", name, args.warmup,
                             args.duration, args.connections, args.loadgen)
                    result[name] = measure(server, args, tmp)
                    r = result[name]
                    log.info("%s: %.0f req/s, p50 %.2f ms, p99 %.2f ms, %d errors", name, r["rps"],
                             r["p50_ms"], r["p99_ms"], r["errors"])
                finally:
                    server.stop()
                result[name].update(info, gunicorn_log=server.log_counts())
                out["servers"][name] = {"command": " ".join(shlex.quote(c) for c in server.cmd)}
            out["rounds"].append(result)
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    def med(name: str, key: str) -> float:
        return statistics.median(r[name][key] for r in out["rounds"])

    rps = {n: med(n, "rps") for n in out["endpoints"]}
    p99 = {n: med(n, "p99_ms") for n in out["endpoints"]}
    cpu = {n: med(n, "server_cpu_ms_per_request") for n in out["endpoints"]}
    errors = {n: sum(r[n]["errors"] for r in out["rounds"]) for n in out["endpoints"]}

    def beside(name: str) -> dict:
        """An informational endpoint's figures against bare (and against uncached, when it ran)."""
        return {"throughput_ratio": rps[name] / rps["bare"], "p99_ms": p99[name], "cpu_ms_per_request": cpu[name],
                "errors": errors[name], **({"throughput_vs_uncached": rps[name] / rps["uncached"],
                                            "cpu_vs_uncached": cpu[name] / cpu["uncached"]} if args.uncached else {})}
    s = {
        "throughput_ratio": rps["recommendations"] / rps["bare"],
        "p99_ratio": p99["recommendations"] / p99["bare"],
        "cpu_ratio": cpu["recommendations"] / cpu["bare"],
        "recommendations_errors": errors["recommendations"], "bare_errors": errors["bare"],
        "targets": "Recommendations throughput >= 0.7 x the bare endpoint's and p99 <= 2 x its p99, in the "
                   "same run; a 60-second load run shows zero errors.",
    }
    s["throughput_pass"] = s["throughput_ratio"] >= 0.7
    s["p99_pass"] = s["p99_ratio"] <= 2.0
    s["zero_errors_pass"] = args.duration >= 60 and errors["recommendations"] == 0
    if args.uncached:
        u = s["uncached"] = {"throughput_ratio": rps["uncached"] / rps["bare"],
                             "p99_ratio": p99["uncached"] / p99["bare"],
                             "cpu_ratio": cpu["uncached"] / cpu["bare"], "errors": errors["uncached"]}
        u["throughput_pass"], u["p99_pass"] = u["throughput_ratio"] >= 0.5, u["p99_ratio"] <= 2.0
    if args.recorded is not None and args.uncached:
        s["recorded"] = {"rate": args.recorded, "throughput_vs_uncached": rps["recorded"] / rps["uncached"],
                         "cpu_vs_uncached": cpu["recorded"] / cpu["uncached"], "errors": errors["recorded"]}
        s["recorded"]["pass"] = s["recorded"]["throughput_vs_uncached"] >= 0.95
    if args.versus:
        s["versus"] = {"bundle": str(args.versus), **beside("versus")}
    if args.explained:
        s["explained"] = beside("explained")
    out["summary"] = s
    out["total_s"] = time.perf_counter() - started
    out["machine"]["loadavg_end"] = os.getloadavg()
    text = report(out)
    print(text, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2, default=float) + "\n")
    args.md.parent.mkdir(parents=True, exist_ok=True)
    args.md.write_text(text + "\n")
    log.info("wrote %s and %s", args.out, args.md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
