"""examples/quickstart.ipynb runs from top to bottom against the tiny model (its model path and steps are
environment variables its first cell reads), and is stored with its outputs cleared."""

import json
import re

from .app_helpers import REPO


NOTEBOOK = REPO / "examples" / "quickstart.ipynb"


def test_the_notebook_is_stored_without_outputs():
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    code = [cell for cell in cells if cell["cell_type"] == "code"]
    assert code and all(cell["outputs"] == [] and cell["execution_count"] is None for cell in code)
    assert 'os.environ.get("FACE_ANON_MODEL", "hkung/face-anon-simple")' in "".join(code[0]["source"])


def test_the_notebook_runs_against_the_tiny_model(tiny_model_dir, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("FACE_ANON_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("FACE_ANON_STEPS", "2")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}).execute()

    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    text = ["".join(o.text for o in cell.outputs if o.output_type == "stream" and o.name == "stdout") for cell in code]
    images = [sum("image/png" in o.get("data", {}) for o in cell.outputs) for cell in code]
    assert text[0].strip() == f"model: {tiny_model_dir}, steps: 2"
    assert "FaceAnonPipeline on cpu at 16 px" in text[1]
    assert re.fullmatch(r"\d face\(s\) found; the first at \[182, 58, 270, 178\]\n", text[2])  # the astronaut
    assert images[2:] == [1, 1, 1, 1]  # the aligned face, anonymized, swapped, the whole photo before/after
    status, unchanged = text[5].splitlines()  # (stderr, e.g. warnings, is not part of it)
    assert status.startswith("ok ['anonymized'") and set(re.findall(r"'(\w+)'", status)) == {"anonymized"}
    assert unchanged == "pixels far from the faces unchanged: True"
