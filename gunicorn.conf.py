"""How `make serve` runs the site in production: gunicorn reads this file from the
project folder by itself (tests and benchmarks that start gunicorn get it too).

- gevent workers: each reads requests in an event loop, so clients that send
  their headers a byte at a time (slowloris) hold a cheap greenlet, not the
  worker; 50 such clients left 4 sync workers unable to answer at all. Measured
  against sync workers on this project's pages (bench/serving.py): the same
  throughput, as the work per request is the same and the machine's cores are
  the limit either way.
- psycopg2 waits for PostgreSQL through gevent (psycogreen, post_fork), so a
  worker serves other requests while one waits on a commit or a lock.
- One worker per core (WEB_CONCURRENCY overrides): 4 sync workers on 2 cores
  served fewer pages than 2.
- The access log keeps no query string (searches are interests: health data),
  no referrer or user agent, and addresses cut to their network (/24 for IPv4,
  /48 for IPv6), for every visitor.
- Metrics (metrics.py) in prometheus_client's multiprocess mode: a scrape lands
  on one worker, so each worker writes its counts into PROMETHEUS_MULTIPROC_DIR
  and /metrics adds them up. Unset, a fresh temporary folder is made for this
  server and removed when it stops; a folder that is set is emptied of an
  earlier run's files at start, as prometheus_client requires.

GUNICORN_CMD_ARGS adds or overrides settings, e.g. "--access-logfile /var/log/x".
"""

import gc
import multiprocessing
import os
import shutil
import sys
import tempfile
from pathlib import Path

from gunicorn.glogging import Logger

# This file is read before gunicorn changes to the project folder (--chdir):
# the project's modules must be importable from wherever it was started.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from personalization.identity import network_of  # noqa: E402

worker_class = "gevent"
workers = int(os.environ.get("WEB_CONCURRENCY") or multiprocessing.cpu_count())
# A request's headers must arrive within this long; gevent makes waiting cheap,
# this makes it finite.
timeout = 30
accesslog = "-"
# Network, time, method, path without its query, status, bytes, milliseconds.
access_log_format = '%(h)s %(t)s "%(m)s %(U)s" %(s)s %(B)s %(M)sms'


class PrivateAccessLogger(Logger):
    """gunicorn's logger, with the client address cut to its network."""

    def atoms(self, resp, req, environ, request_time):
        atoms = super().atoms(resp, req, environ, request_time)
        atoms["h"] = network_of(atoms["h"])
        return atoms


logger_class = PrivateAccessLogger


# Set here, in the master, before any worker imports prometheus_client: it picks
# its storage at import. Workers inherit the environment.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    metrics_folder = tempfile.mkdtemp(prefix="antidote-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_folder
    os.environ["ANTIDOTE_OWNS_METRICS_DIR"] = "1"


def on_starting(server):
    """Start the metrics from zero: files of an earlier run would add up too."""
    folder = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.db"):
        stale.unlink()


def post_fork(server, worker):
    """Let a gevent worker's other requests run while psycopg2 waits for
    PostgreSQL (a commit, a lock): without it, each query stalls the worker."""
    from gunicorn.workers.ggevent import GeventWorker

    if isinstance(worker, GeventWorker):
        from psycogreen.gevent import patch_psycopg

        patch_psycopg()


def post_worker_init(worker):
    """Move what the worker holds once the app is loaded (modules, the app,
    the statements built at import) into the garbage collector's permanent
    generation: its full collections then walk only what was made since.
    Without this, each full collection walked every object of the app and
    stalled all of the worker's requests meanwhile."""
    gc.freeze()


def child_exit(server, worker):
    """Drop a dead worker's live gauges (a Personalize circuit it saw open)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    """Remove the metrics folder this file made (not one the operator chose)."""
    if os.environ.get("ANTIDOTE_OWNS_METRICS_DIR"):
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
