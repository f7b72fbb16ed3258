"""examples/quickstart.ipynb runs from top to bottom against the tiny model (its model path and steps are
environment variables its first cell reads), and is stored with its outputs cleared."""

import json

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
    text = ["".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream") for cell in code]
    images = [sum("image/png" in o.get("data", {}) for o in cell.outputs) for cell in code]
    assert text[0].strip() == f"model: {tiny_model_dir}, steps: 2"
    assert "FaceAnonPipeline on cpu at 16 px" in text[1]
    assert text[2].startswith("1 face(s) found")
    assert images[2:] == [1, 1, 1, 1]  # the aligned face, anonymized, swapped, the whole photo before/after
    assert text[5].splitlines() == ["ok ['anonymized']", "pixels far from the faces unchanged: True"]
