"""Fixtures of the Ray engine tests: one local Ray cluster with 2 CPUs for the session, the test photos.

The folder has no ``__init__.py``: as a package it would be named ``ray`` and hide Ray itself.
"""

import logging

import pytest
import ray_helpers


pytest.importorskip("ray.data", reason='the Ray engine needs pip install "face-anon[ray]"')


@pytest.fixture(scope="session")
def ray_cluster():
    """A local cluster of 2 CPUs, started once: every Ray run of the session joins it."""
    import ray
    import ray.cloudpickle

    # Workers cannot import this test folder: send the helpers' functions (the counting loader) by value.
    ray.cloudpickle.register_pickle_by_value(ray_helpers)
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def photos(tmp_path_factory):
    """Twelve photos: faces, no faces, overlapping faces, grey, nested, one corrupt (``ray_helpers``)."""
    return ray_helpers.make_photos(tmp_path_factory.mktemp("ray-photos") / "in")
