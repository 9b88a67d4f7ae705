"""Loading is safe by default: no remote code unless a recipe asks (and then the log says
so), weights written and read as safetensors, and every ``torch.load`` restricted to
tensors and plain data."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

from lightning_rlhf.models import builtin
from lightning_rlhf.models.config import ModelSettings
from lightning_rlhf.models.loading import from_pretrained_kwargs

ROOT = Path(__file__).resolve().parents[1]


def test_remote_code_is_off_unless_the_recipe_turns_it_on(caplog):
    with caplog.at_level(logging.WARNING, logger="lightning_rlhf.models.loading"):
        assert from_pretrained_kwargs(ModelSettings(name_or_path="org/model"))["trust_remote_code"] is False
        assert not caplog.records
        assert from_pretrained_kwargs(ModelSettings(name_or_path="org/model", trust_remote_code=True))["trust_remote_code"]
    (record,) = caplog.records
    assert "trust_remote_code is ON for org/model" in record.getMessage()


def test_models_are_written_as_safetensors():
    directory = Path(builtin.resolve("builtin:tiny-llama"))
    assert (directory / "model.safetensors").exists()
    assert not list(directory.glob("*.bin"))


def _torch_load_calls(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load":
            if isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":
                yield node


def test_every_torch_load_in_the_package_is_weights_only():
    sources = [*ROOT.joinpath("lightning_rlhf").rglob("*.py"), *ROOT.joinpath("plugins").rglob("*.py")]
    calls = [(path, call) for path in sources for call in _torch_load_calls(path)]
    assert calls, "expected the package to load checkpoints somewhere"
    for path, call in calls:
        flags = {k.arg: k.value for k in call.keywords}
        assert "weights_only" in flags and isinstance(flags["weights_only"], ast.Constant), f"{path}:{call.lineno}"
        assert flags["weights_only"].value is True, f"{path}:{call.lineno}"
