"""One contract test over every registered plugin: a new plugin is tested by registering it."""

import inspect

import pytest
import torch

from lightning_rlhf import list_algorithms
from lightning_rlhf.testing import check_algorithm


@pytest.mark.parametrize("name", sorted(list_algorithms()))
def test_plugin_contract(name):
    torch.manual_seed(0)
    cls = list_algorithms()[name]
    out = check_algorithm(cls())
    assert out.metrics, f"{name} logs no metrics"


def protocol_members(protocol: type) -> dict[str, object]:
    """Every member a context protocol declares, its own and its bases': name -> the
    declared function (or property), or None for an annotated attribute."""
    members: dict[str, object] = {}
    for base in reversed(protocol.__mro__):
        if base is object or not getattr(base, "_is_protocol", False) or base.__name__ == "Protocol":
            continue
        members.update(dict.fromkeys(base.__dict__.get("__annotations__", {})))
        members.update({name: value for name, value in vars(base).items()
                        if not name.startswith("_") and (callable(value) or isinstance(value, property))})
    return members


def check_lends(module, protocol: type) -> None:
    """``module`` has every member of ``protocol``, each method accepts every argument the
    protocol names, and defaults to what the protocol says (a plugin that leaves ``n`` out
    gets what the protocol promised)."""
    for name, declared in protocol_members(protocol).items():
        assert hasattr(module, name), f"{type(module).__name__} lacks {protocol.__name__}.{name}"
        if inspect.isfunction(declared):
            accepted = inspect.signature(getattr(module, name)).parameters
            wanted = {n: p for n, p in inspect.signature(declared).parameters.items() if n != "self"}
            assert all(p in accepted for p in wanted), f"{type(module).__name__}.{name} must accept {list(wanted)}, takes {list(accepted)}"
            for argument, parameter in wanted.items():
                assert accepted[argument].default == parameter.default, (
                    f"{type(module).__name__}.{name}({argument}=...) defaults to {accepted[argument].default}, "
                    f"{protocol.__name__} says {parameter.default}")


def test_the_modules_lend_what_their_context_protocols_list():
    """The protocols are the plugin author's one place to read what ``ctx`` offers: every
    member must exist on the module that lends it, with the arguments listed."""
    from lightning_rlhf import OnlineContext, PolicyContext, create_algorithm
    from lightning_rlhf.models.config import ModelSettings
    from lightning_rlhf.modules.online_policy import OnlinePolicyModule
    from lightning_rlhf.modules.policy import PolicyModule
    from lightning_rlhf.rewards import FunctionReward

    members = protocol_members(OnlineContext)
    assert {"generate", "reward", "step_rewards", "values", "more_prompts", "sum_over_processes", "tokenizer", "device",
            "policy_logps", "reference_logps", "policy_logps_and_values"} <= set(members)
    assert inspect.signature(members["generate"]).parameters["n"].default == 1  # samples per prompt, one unless asked
    online = OnlinePolicyModule(ModelSettings("builtin:tiny-llama"), create_algorithm("ppo"),
                                reward=FunctionReward("lightning_rlhf.rewards.rules.letter_e_reward"))
    check_lends(online, OnlineContext)
    check_lends(PolicyModule(ModelSettings("builtin:tiny-llama"), create_algorithm("dpo")), PolicyContext)


def test_online_plugins_type_their_context():
    from lightning_rlhf import OnlineAlgorithm, OnlineContext

    for name, cls in list_algorithms().items():
        if issubclass(cls, OnlineAlgorithm):
            for hook in (cls.rollout, cls.loss):
                ctx = inspect.signature(hook, eval_str=True).parameters["ctx"].annotation
                assert ctx is OnlineContext, f"{name}.{hook.__name__}: type ctx as lightning_rlhf.OnlineContext, got {ctx}"
