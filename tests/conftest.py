import os

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(scope="session", autouse=True)
def _model_cache(tmp_path_factory):
    # Built-in models are built once per test session, in a private cache.
    if "LIGHTNING_RLHF_HOME" not in os.environ:
        os.environ["LIGHTNING_RLHF_HOME"] = str(tmp_path_factory.mktemp("lightning_rlhf_home"))
    yield


@pytest.fixture(scope="session")
def tiny_tokenizer(_model_cache):
    from lightning_rlhf.models.config import ModelSettings
    from lightning_rlhf.models.loading import load_tokenizer

    return load_tokenizer(ModelSettings(name_or_path="builtin:tiny-llama"))
