"""Failures look like a product, not a traceback: 503 when the database is down."""

import pytest
from sqlalchemy.engine import make_url

from app import create_app
from helpers import app_config


@pytest.fixture
def app_without_database(backend, database_url, tmp_path):
    """An app whose database cannot be reached, of the kind under test."""
    if backend == "sqlite":
        unreachable = f"sqlite:///{tmp_path}/missing-dir/antidote.db"
    else:
        # Nothing listens on port 1: the connection is refused at once.
        unreachable = make_url(database_url).set(port=1).render_as_string(False)
    return create_app(app_config(unreachable, PROPAGATE_EXCEPTIONS=False))


def test_healthz_is_503_when_the_database_is_down(app_without_database):
    response = app_without_database.test_client().get("/healthz")
    assert response.status_code == 503
    assert response.get_json() == {"status": "unavailable", "database": "unreachable"}


@pytest.mark.parametrize("path", ["/", "/procedures/botox", "/search?q=botox"])
def test_pages_show_the_error_page_when_the_database_is_down(
    app_without_database, path
):
    response = app_without_database.test_client().get(path)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "30"
    html = response.get_data(as_text=True)
    assert "Something went wrong on our side" in html
    assert "Traceback" not in html and "OperationalError" not in html


def test_unexpected_errors_show_the_500_page(database_url):
    app = create_app(app_config(database_url, PROPAGATE_EXCEPTIONS=False))

    @app.get("/boom")
    def boom():
        raise RuntimeError("a bug")

    response = app.test_client().get("/boom")
    assert response.status_code == 500
    html = response.get_data(as_text=True)
    assert "Something went wrong on our side" in html
    assert "a bug" not in html
    json_response = app.test_client().get(
        "/boom", headers={"Accept": "application/json"}
    )
    assert json_response.get_json() == {"error": "internal server error"}


def test_method_not_allowed_is_a_clear_error(client):
    response = client.post("/healthz")
    assert response.status_code == 405
    assert "error" in response.get_json()
