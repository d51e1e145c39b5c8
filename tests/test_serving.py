"""Real servers start and serve the seeded site, as `make run` and `make serve` do."""

import os
import sys
from contextlib import ExitStack

import pytest

from helpers import fetch, flask_cli, gunicorn_command, running_server


@pytest.fixture
def serve():
    """Start server commands; stop them when the test ends."""
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
