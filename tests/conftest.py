import os

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(scope="session", autouse=True)
def _model_cache(tmp_path_factory):
    # Built-in models are built once per test session, in a private cache.
    if "LIGHTNING_RLHF_HOME" not in os.environ:
        os.environ["LIGHTNING_RLHF_HOME"] = str(tmp_path_factory.mktemp("lightning_rlhf_home"))
    # Compiled kernels too: inductor's shared cache (/tmp/torchinductor_<user>) is keyed
    # without ATEN_CPU_CAPABILITY, so a run on the default kernel path reused AVX2 kernels
    # and failed to compile them against its own headers.
    if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(tmp_path_factory.mktemp("torchinductor"))
    yield


@pytest.fixture(scope="session")
def tiny_tokenizer(_model_cache):
    from lightning_rlhf.models.config import ModelSettings
    from lightning_rlhf.models.loading import load_tokenizer

    return load_tokenizer(ModelSettings(name_or_path="builtin:tiny-llama"))


@pytest.fixture
def one_thread():
    # Tiny matrices: threads only contend with each other (and with other jobs) here.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
