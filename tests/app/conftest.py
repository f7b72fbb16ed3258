"""One web app process for the app tests (the tiny model from ``tests/conftest.py``), stopped at the end."""

import pytest

from .app_helpers import SERVER_FLAGS, start_app


@pytest.fixture(scope="session")
def app_server(tiny_model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("app")
    server = start_app(tiny_model_dir, folder / "root", folder / "app.log", *SERVER_FLAGS)
    yield server
    server.stop()
