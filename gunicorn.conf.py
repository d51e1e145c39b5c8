"""How `make serve` runs the site in production: gunicorn reads this file from the
project folder by itself (tests and benchmarks that start gunicorn get it too).

- gevent workers: each reads requests in an event loop, so clients that send
  their headers a byte at a time (slowloris) hold a cheap greenlet, not the
  worker; 50 such clients left 4 sync workers unable to answer at all. Measured
  against sync workers on this project's pages (bench/serving.py): the same
  throughput, as the work per request is the same and the machine's cores are
  the limit either way.
- One worker per core (WEB_CONCURRENCY overrides): 4 sync workers on 2 cores
  served fewer pages than 2.
- The access log keeps no query string (searches are interests: health data),
  no referrer or user agent, and addresses cut to their network (/24 for IPv4,
  /48 for IPv6), for every visitor.

GUNICORN_CMD_ARGS adds or overrides settings, e.g. "--access-logfile /var/log/x".
"""

import ipaddress
import multiprocessing
import os

from gunicorn.glogging import Logger

worker_class = "gevent"
workers = int(os.environ.get("WEB_CONCURRENCY") or multiprocessing.cpu_count())
# A request's headers must arrive within this long; gevent makes waiting cheap,
# this makes it finite.
timeout = 30
accesslog = "-"
# Network, time, method, path without its query, status, bytes, milliseconds.
access_log_format = '%(h)s %(t)s "%(m)s %(U)s" %(s)s %(B)s %(M)sms'


def network_of(address: str) -> str:
    """An address cut to its network: 203.0.113.7 -> 203.0.113.0."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return "-"
    prefix = 24 if ip.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False).network_address)


class PrivateAccessLogger(Logger):
    """gunicorn's logger, with the client address cut to its network."""

    def atoms(self, resp, req, environ, request_time):
        atoms = super().atoms(resp, req, environ, request_time)
        atoms["h"] = network_of(atoms["h"])
        return atoms


logger_class = PrivateAccessLogger
