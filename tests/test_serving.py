"""Real servers start and serve the seeded site, as `make run` and `make serve` do."""

import os
import socket
import sys
import threading
import time
import urllib.request
from contextlib import ExitStack

import pytest

from helpers import fetch, flask_cli, gunicorn_command, running_server

# Live servers under slow clients and load: alone.
pytestmark = pytest.mark.serial


@pytest.fixture
def serve(request):
    """Start server commands; stop them when the test ends.

    A test that also uses `app` gets it set up first, so pytest (which tears
    down in reverse) stops the servers before `app` empties the tables: a
    server still aggregating while rows are deleted can deadlock the delete
    or write rows into the next test.
    """
    if "app" in request.fixturenames:
        request.getfixturevalue("app")
    with ExitStack() as servers:
        yield lambda command, env, url: servers.enter_context(
            running_server(command, env, url)
        )


def server_env(database_url: str) -> dict:
    env = dict(os.environ)
    env.update(DATABASE_URL=database_url, SECRET_KEY="serving-test-key")
    return env


def test_make_run_path_serves_the_seeded_site(serve, tmp_path, free_port):
    env = server_env(f"sqlite:///{tmp_path}/run.db")
    flask_cli(env, "db", "upgrade")
    seeded = flask_cli(env, "seed-demo", "--if-empty")
    assert "Added 8 categories" in seeded.stdout
    again = flask_cli(env, "seed-demo", "--if-empty")
    assert "not seeding" in again.stdout

    base = f"http://127.0.0.1:{free_port}"
    serve(
        [
            sys.executable,
            "-m",
            "flask",
            "--app",
            "app",
            "run",
            "--port",
            str(free_port),
        ],
        env,
        base + "/healthz",
    )
    status, html = fetch(base + "/")
    assert status == 200
    assert 'id="procedures"' in html and 'data-track-type="doctor"' in html
    assert fetch(base + "/procedures/rhinoplasty")[0] == 200
    assert fetch(base + "/procedures/no-such-thing")[0] == 404


def test_gunicorn_serves_with_several_workers(serve, catalog, database_url, free_port):
    env = server_env(database_url)
    base = f"http://127.0.0.1:{free_port}"
    serve(
        gunicorn_command(free_port),
        env,
        base + "/healthz",
    )
    for _ in range(10):
        status, html = fetch(base + "/")
        assert status == 200
        assert 'id="doctors"' in html


def slow_clients(port: int, count: int) -> tuple[list, threading.Event]:
    """Open `count` connections that send a request's headers a byte every second
    and never finish (slowloris); return them and the event that stops them."""
    stop = threading.Event()
    sockets = []

    def trickle(sock):
        try:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: antidote\r\n")
            while not stop.wait(1):
                sock.sendall(b"X")
        except OSError:
            pass  # the server hung up on it: fine

    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sockets.append(sock)
        threading.Thread(target=trickle, args=(sock,), daemon=True).start()
    return sockets, stop


def test_fifty_slow_clients_do_not_stop_the_site(
    serve, catalog, database_url, free_port
):
    """`make serve`'s arrangement: connections that never finish their headers
    (four of them stopped four sync workers) cost nothing while pages answer."""
    base = f"http://127.0.0.1:{free_port}"
    serve(
        gunicorn_command(free_port, workers=None),
        server_env(database_url),
        base + "/healthz",
    )
    sockets, stop = slow_clients(free_port, 50)
    try:
        time.sleep(2)  # every slow client connected and trickling
        for path in ("/", "/procedures/botox", "/search?q=botox", "/healthz"):
            started = time.monotonic()
            status, _ = fetch(base + path)
            assert status == 200
            assert time.monotonic() - started < 1.0, path
    finally:
        stop.set()
        for sock in sockets:
            sock.close()


def test_the_access_log_keeps_no_query_and_no_full_address(
    serve, catalog, database_url, free_port
):
    """Searches are interests (health data): the production access log records
    the path without its query, no referrer or user agent, and the address cut
    to its network."""
    base = f"http://127.0.0.1:{free_port}"
    server = serve(
        gunicorn_command(free_port), server_env(database_url), base + "/healthz"
    )
    request = urllib.request.Request(
        base + "/search?q=lip%20filler%20secret",
        headers={"User-Agent": "Agent-Secret/1.0", "Referer": base + "/?q=referred"},
    )
    urllib.request.urlopen(request, timeout=5).read()
    deadline = time.monotonic() + 5
    while '"GET /search"' not in server.output() and time.monotonic() < deadline:
        time.sleep(0.1)
    log = server.output()
    assert "127.0.0.0 [" in log and '"GET /search" 200' in log
    for secret in ("lip", "filler", "secret", "Agent-Secret", "referred", "127.0.0.1 "):
        assert secret not in log.split("Booting worker")[-1], secret
