"""experiments/colab_quickstart.ipynb runs end to end (tiny config, offline Fashion-MNIST, CPU,
no TensorFlow)."""

import os

import pytest

from core_imports_test import without_tensorflow

nbclient = pytest.importorskip("nbclient", reason="pip install -e .[test] (nbclient, ipykernel)")
nbformat = pytest.importorskip("nbformat", reason="pip install -e .[test] (nbformat)")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IDX_DIR = "/usr/share/datasets/fashion-mnist"


@pytest.mark.skipif(
    not os.path.isdir(IDX_DIR), reason=f"needs the Fashion-MNIST IDX files in {IDX_DIR}"
)
def test_colab_quickstart_runs_end_to_end_on_the_cpu(tmp_path, monkeypatch):
    workdir = tmp_path / "run"
    monkeypatch.setenv("QUICKSTART_SMOKE", "1")
    monkeypatch.setenv("QUICKSTART_WORKDIR", str(workdir))
    monkeypatch.setenv("QUICKSTART_IDX_DIR", IDX_DIR)
    monkeypatch.setenv("QUICKSTART_LABEL_BUDGET", "5")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    # The kernel runs without TensorFlow (as on the GPU machine, which has none): the notebook
    # reads metrics.jsonl only, and importing TensorFlow would cost 6.5 s of CPU.
    monkeypatch.setenv("PYTHONPATH", without_tensorflow()["PYTHONPATH"])
    notebook = nbformat.read(os.path.join(REPO, "experiments", "colab_quickstart.ipynb"), 4)
    client = nbclient.NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": REPO}}
    )
    client.execute()  # raises CellExecutionError naming the cell on any error
    assert (workdir / "metrics.jsonl").exists()
    assert (workdir / "training_curves.png").exists()
    assert len(list((workdir / "analysis").glob("*.png"))) >= 5
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 6  # curves, the analysis plots, the predicted images
    text = "".join(o.get("text", "") for o in outputs)
    assert "margin" in text and "train image" in text
    assert "clu.metric_writers cannot be imported" in text  # TensorFlow was hidden:
    assert "No module named 'tensorflow'" in text
