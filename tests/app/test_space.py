"""The Space folder: a valid Space card naming the model the app loads, the package's requirements, and an
assembled Space whose app.py runs the package's app from the files uploaded beside it."""

import configparser
import os
import subprocess
import sys

from packaging.requirements import Requirement
from packaging.version import Version

from .app_helpers import REPO


SPACE = REPO / "space"


def setup_cfg() -> configparser.ConfigParser:
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    return config


def requirements(text: str) -> list[Requirement]:
    lines = (line.split("#")[0].strip() for line in text.splitlines())
    return [Requirement(line) for line in lines if line]


def test_the_space_card_runs_the_app_with_the_model_the_app_loads():
    from huggingface_hub import SpaceCard

    import original_checkpoint

    card = SpaceCard.load(SPACE / "README.md")
    assert card.data.sdk == "gradio"
    assert (SPACE / card.data.app_file).is_file()
    defaults = [original_checkpoint.DEFAULT_FACE_MODEL, original_checkpoint.DEFAULT_SD_MODEL]
    defaults.append(original_checkpoint.DEFAULT_CLIP_MODEL)
    assert card.data.models == defaults == card.data.preload_from_hub
    (gradio,) = [r for r in requirements(setup_cfg()["options.extras_require"]["app"]) if r.name == "gradio"]
    assert Version(card.data.sdk_version) in gradio.specifier  # the SDK's Gradio is one the app supports


def test_the_space_installs_what_the_package_needs():
    needed = {r.name.lower(): r for r in requirements(setup_cfg()["options"]["install_requires"])}
    given = {r.name.lower(): r for r in requirements((SPACE / "requirements.txt").read_text())}
    assert given == needed


def test_the_assembled_space_runs_the_packages_app_from_its_own_files(tmp_path):
    target = tmp_path / "space"
    deploy = subprocess.run(
        [sys.executable, str(SPACE / "deploy.py"), "--assemble", str(target)], capture_output=True, text=True
    )
    assert deploy.returncode == 0, deploy.stderr
    assert (target / "face_anon" / "weights" / "centerface.onnx").is_file()
    assert not list(target.rglob("__pycache__"))
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import app, face_anon, face_anon.apps.web as web; print(face_anon.__file__);assert app.main is web.main",
        ],
        cwd=target,
        env=env,
        capture_output=True,
        text=True,
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == str(target / "face_anon" / "__init__.py")  # the uploaded copy, not an install
    helped = subprocess.run([sys.executable, "app.py", "--help"], cwd=target, env=env, capture_output=True, text=True)
    assert helped.returncode == 0 and "face-anon-app" in helped.stdout


def test_face_anon_app_is_the_packages_app_and_gradio_an_extra():
    from face_anon.apps import web

    scripts = dict(
        line.split(" = ") for line in setup_cfg()["options.entry_points"]["console_scripts"].strip().splitlines()
    )
    module, function = scripts["face-anon-app"].split(":")
    assert getattr(__import__(module, fromlist=[function]), function) is web.main
    assert "gradio" not in setup_cfg()["options"]["install_requires"]  # only with the app extra
