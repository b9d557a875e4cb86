"""colab/quickstart.ipynb runs headless (nbclient) with a tiny step count and shows a sample grid and losses."""
import base64
import os
import re

import numpy as np
import pytest
from PIL import Image

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "colab", "quickstart.ipynb")
STEPS = 4


def test_quickstart_notebook_runs(tmp_path, monkeypatch):
  # The kernel is a fresh process: one CPU device keeps its compile short.
  monkeypatch.setenv("XLA_FLAGS", re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                                         os.environ.get("XLA_FLAGS", "")).strip())
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  nb = nbformat.read(NOTEBOOK, as_version=4)
  params = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
  assert len(params) == 1 and "NUM_TRAIN_STEPS" in params[0].source
  workdir = tmp_path / "run"
  params[0].source = (f"NUM_TRAIN_STEPS = {STEPS}\nWORKDIR = {str(workdir)!r}\n"
                      "CONFIG_OVERRIDES = {'model.g_width': 8, 'model.d_width': 8, 'data.image_size': 16, "
                      "'batch_size': 16, 'sample.num': 16}\nREPO_URL = ''\n")
  nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                          resources={"metadata": {"path": os.path.join(ROOT, "colab")}}).execute()

  grid_file = workdir / "samples" / f"{STEPS}.png"
  assert grid_file.is_file()
  grid = np.asarray(Image.open(grid_file))
  assert grid.shape == (4 * 18 + 2, 4 * 18 + 2)  # 16 samples of 16x16 in a 4x4 grid with 2-pixel gaps
  assert (workdir / "checkpoints" / str(STEPS)).is_dir()
  outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
  shown = [base64.b64decode(o["data"]["image/png"]) for o in outputs if "image/png" in o.get("data", {})]
  assert len(shown) == 2  # the sample grid and the loss curve
  assert shown[0] == grid_file.read_bytes()
  text = "".join(o.get("text", "") for o in outputs)
  assert f"trained steps: {STEPS}" in text
  losses = re.search(r"^g_loss (.*)$", text, re.M).group(1).split()
  assert [int(p.split(":")[0]) for p in losses] == list(range(1, STEPS + 1))  # log_every_steps = 1 here
  assert all(np.isfinite(float(p.split(":")[1])) for p in losses)
  assert (workdir / "loss_curve.png").is_file()
