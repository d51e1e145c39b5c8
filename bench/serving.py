"""The production server arrangement against the one it replaced, in the same run:
page throughput (wrk, 16 connections, 127.0.0.1 only) and whether pages still
answer while 50 clients trickle their request headers (slowloris).

- before: `make serve` until issue #13: gunicorn, 4 sync workers;
- now: `make serve` (gunicorn.conf.py): gevent workers, one per core.

    .venv/bin/python bench/serving.py [--rounds 4] [--seconds 10]
        [--databases sqlite,postgresql] [--write BENCHMARKS.md]
"""

import argparse
import json
import os
import socket
import statistics
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("SECRET_KEY", "benchmark-only")

from itsdangerous import URLSafeSerializer  # noqa: E402

from bench.http_load import SECRET, VISITOR, Server, prepare, wrk  # noqa: E402
from bench.ranking_latency import scratch_database  # noqa: E402
from bench.report import replace_section  # noqa: E402

PYTHON_GUNICORN = [sys.executable, "-m", "gunicorn"]
ARRANGEMENTS = {
    # An empty --config: none of gunicorn.conf.py, as before it existed.
    "before: 4 sync workers": [
        *PYTHON_GUNICORN,
        "--config",
        "/dev/null",
        "--workers",
        "4",
        "--access-logfile",
        "-",
        "app:app",
    ],
    "now: gevent, 1 worker per core": [*PYTHON_GUNICORN, "app:app"],
}
SLOW_CLIENTS = 50
# How long a page may take while slow clients are connected, at most.
PATIENCE_SECONDS = 5.0


def slowest_answer_under_slow_clients(base: str, port: int) -> float | None:
    """Seconds the slowest of 5 page requests took with 50 slow clients
    connected; None when one got no answer within PATIENCE_SECONDS."""
    stop = threading.Event()
    sockets = []

    def trickle(sock: socket.socket) -> None:
        try:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: antidote\r\n")
            while not stop.wait(1):
                sock.sendall(b"X")
        except OSError:
            pass

    try:
        for _ in range(SLOW_CLIENTS):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sockets.append(sock)
            threading.Thread(target=trickle, args=(sock,), daemon=True).start()
        time.sleep(2)
        slowest = 0.0
        for _ in range(5):
            started = time.monotonic()
            try:
                with urllib.request.urlopen(base + "/", timeout=PATIENCE_SECONDS):
                    pass
            except OSError:
                return None
            slowest = max(slowest, time.monotonic() - started)
        return slowest
    finally:
        stop.set()
        for sock in sockets:
            sock.close()


def measure(command: list[str], env: dict, seconds: int) -> dict:
    cookie = "Cookie: antidote_visitor=" + URLSafeSerializer(
        SECRET, salt="visitor-id"
    ).dumps(VISITOR)
    server = Server(command, env)
    try:
        home = wrk(server.base + "/", seconds, headers=[cookie])
        page = wrk(server.base + "/procedures/botox", seconds, headers=[cookie])
        slowest = slowest_answer_under_slow_clients(server.base, server.port)
    finally:
        server.stop()
    return {"home": home["rps"], "procedure": page["rps"], "slowest": slowest}


def run(kind: str, rounds: int, seconds: int) -> dict:
    url, cleanup = scratch_database(kind)
    try:
        prepare(url)
        env = {"DATABASE_URL": url, "SECRET_KEY": SECRET}
        names = list(ARRANGEMENTS)
        runs: dict[str, list[dict]] = {name: [] for name in names}
        for number in range(rounds):
            order = names if number % 2 == 0 else list(reversed(names))
            for name in order:
                runs[name].append(measure(ARRANGEMENTS[name], env, seconds))
        before, now = names
        report = {"database": kind, "arrangements": {}}
        for name in names:
            slowest = [r["slowest"] for r in runs[name]]
            report["arrangements"][name] = {
                "home_rps": statistics.median(r["home"] for r in runs[name]),
                "procedure_rps": statistics.median(r["procedure"] for r in runs[name]),
                "slowest_under_slow_clients": None if None in slowest else max(slowest),
            }
        for page in ("home", "procedure"):
            report[f"{page}_ratio"] = statistics.median(
                new[page] / old[page]
                for new, old in zip(runs[now], runs[before], strict=True)
            )
        print(json.dumps(report), flush=True)
        return report
    finally:
        cleanup()


def markdown(reports: list[dict], rounds: int, seconds: int) -> str:
    lines = [
        "Command: `.venv/bin/python bench/serving.py --write BENCHMARKS.md` (wrk -t2 "
        f"-c16 -d{seconds}s against each arrangement in turn, {rounds} rounds, which "
        f"goes first alternating; medians). Slow clients: {SLOW_CLIENTS} connections "
        "sending a header byte a second, then the slowest of 5 home-page requests "
        f"(none within {PATIENCE_SECONDS:.0f} s: no answer).",
        "",
        "| database | arrangement | home req/s | procedure req/s | "
        f"with {SLOW_CLIENTS} slow clients |",
        "|---|---|---|---|---|",
    ]
    for report in reports:
        for name, row in report["arrangements"].items():
            slowest = row["slowest_under_slow_clients"]
            answer = "no answer" if slowest is None else f"answers in {slowest:.2f} s"
            lines.append(
                f"| {report['database']} | {name} | {row['home_rps']:.0f} | "
                f"{row['procedure_rps']:.0f} | {answer} |"
            )
        lines.append(
            f"| {report['database']} | ratio now / before | "
            f"{report['home_ratio']:.2f} | {report['procedure_ratio']:.2f} | |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    reports = [
        run(kind, args.rounds, args.seconds) for kind in args.databases.split(",")
    ]
    text = markdown(reports, args.rounds, args.seconds)
    print(text)
    if args.write:
        replace_section(args.write, "serving", text)


if __name__ == "__main__":
    main()
