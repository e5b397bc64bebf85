"""Training is seeded and resumable; exported weights load only with a matching checksum."""

from __future__ import annotations

import json

import pytest
import torch

from LLNAssistLib.errors import InputError
from LLNAssistLib.model import manifest as M
from LLNAssistLib.model.inference import load_model
from LLNAssistLib.model.train import TrainConfig, export_weights, train

ARCH = {"name": "DynUNet2.5D", "in_channels": 3, "out_channels": 6, "filters": [4, 8, 8], "norm": "instance"}


def cfg(out, **kw):
    base = dict(out=str(out), n_cases=2, first_seed=1, seed=3, iterations=4, batch=2, patch=64, warmup=2,
                checkpoint_every=2, device="cpu", arch=dict(ARCH))
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    train(cfg(out), resume=False, log=lambda m: None)
    return out


def test_stop_and_resume_equals_a_straight_run(tmp_path, straight_run):
    out = tmp_path / "resumed"
    train(cfg(out), resume=False, stop_after=2, log=lambda m: None)
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ck["iteration"] == 2
    msgs = []
    train(cfg(out), resume=True, log=msgs.append)
    assert any("resumed" in m and "iteration 2" in m for m in msgs)
    a = torch.load(out / "checkpoint.pt", weights_only=True)
    b = torch.load(straight_run / "checkpoint.pt", weights_only=True)
    assert a["iteration"] == b["iteration"] == 4
    for k in b["model"]:
        assert torch.allclose(a["model"][k], b["model"][k], atol=1e-6), k


def test_resume_with_other_settings_is_refused(tmp_path, straight_run):
    with pytest.raises(RuntimeError, match="n_cases"):
        train(cfg(straight_run, n_cases=3, iterations=6), resume=True, log=lambda m: None)


def test_export_checksum_and_safe_loading(tmp_path, straight_run):
    man = export_weights(straight_run, tmp_path / "m", "test-model", "0.0.1", "llnassist train ...")
    assert man["sha256"] == M.sha256_file(tmp_path / "m" / "model.pt")
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["training_data"]["synthetic"] is True
    loaded = load_model(str(tmp_path / "m"), "cpu")
    assert loaded.manifest["id"] == "test-model"
    with torch.no_grad():
        y = loaded.net(torch.zeros(1, 3, 64, 64))
    assert y.shape == (1, 6, 64, 64)
    raw = bytearray((tmp_path / "m" / "model.pt").read_bytes())
    raw[-10] ^= 1
    (tmp_path / "m" / "model.pt").write_bytes(bytes(raw))
    with pytest.raises(InputError, match="checksum"):
        load_model(str(tmp_path / "m"), "cpu")


def test_bundled_manifest_describes_a_synthetic_model():
    d = M.resolve_model_dir(None)
    man = M.read_manifest(d)
    assert man["sha256"] == M.sha256_file(d / man["weights"])
    assert man["training_data"]["synthetic"] is True and "synthetic" in man["notice"]
    assert man["training"]["command"].startswith("llnassist train")
    assert set(man["labels"]) == {str(i) for i in range(6)}
