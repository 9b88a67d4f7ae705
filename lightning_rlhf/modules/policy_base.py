"""What the offline and the online policy modules share: the policy, the frozen reference,
log-probabilities, sampling and scoring, checkpoints and export.

:class:`~lightning_rlhf.modules.policy.PolicyModule` (offline objectives and self-training)
and :class:`~lightning_rlhf.modules.online_policy.OnlinePolicyModule` (rollouts) add their
loop to this base; neither branches on the other's kind of algorithm.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import ActivationWrapper  # what FSDP's activation checkpointing wraps layers in

from lightning_rlhf.algorithm import Algorithm, SequenceLogps
from lightning_rlhf.data import shared_prompt
from lightning_rlhf.engine import HFEngine, RolloutEngine, SamplingSettings, cache_argument
from lightning_rlhf.models.config import ModelSettings
from lightning_rlhf.models.dropout import disable_dropout
from lightning_rlhf.models.loading import is_peft_model, load_causal_lm, load_tokenizer, unwrap
from lightning_rlhf.modules.optim import OptimizerSettings
from lightning_rlhf.modules.settings import from_plain, to_plain
from lightning_rlhf.modules.sharded import full_weights, loading_into_shards
from lightning_rlhf.ops import completion_index, logit_multiplier, selective_logps, selective_logps_entropy
from lightning_rlhf.reference_cache import BATCH_KEY as CACHED_REFERENCE, ReferenceCache
from lightning_rlhf.rewards.base import RewardSource
from lightning_rlhf.rollout import Rollout, generate_rollout

log = logging.getLogger(__name__)

REFERENCE_PREFIX = "reference_model."
# what the base takes from its subclasses rather than from a recipe: stored with their settings
NOT_STORED = ("generation_batch_size", "hparams")


class HandOver:
    """A constructor call that ``_hand_over`` names another class for builds that class.

    On a class of its own: jsonargparse reads the signature of a class that defines
    ``__new__`` itself from that ``__new__``, and the policy modules' recipe keys are their
    ``__init__``'s (each subclass's own, then ``PolicyModuleBase.__init__``'s).
    """

    def __new__(cls, *args: Any, **kwargs: Any):
        target = cls._hand_over(algorithm_argument(args, kwargs))
        return target(*args, **kwargs) if target is not None else super().__new__(cls)


class PolicyModuleBase(HandOver, L.LightningModule):
    """The policy and what both policy modules lend a plugin; subclasses add the loop."""

    @classmethod
    def _hand_over(cls, algorithm: Algorithm | None) -> type[PolicyModuleBase] | None:
        """The class that builds a module asked of ``cls`` with ``algorithm`` instead (None: ``cls``)."""
        return None

    def __init__(
        self,
        policy: ModelSettings,
        algorithm: Algorithm,
        reference: ModelSettings | None = None,
        optimizer: OptimizerSettings | None = None,
        logps_chunk_size: int = 1024,
        compile_policy: bool = False,
        disable_dropout: bool = True,
        export_dir: str | None = None,
        export_merged: bool = True,
        reward: RewardSource | None = None,
        generation_batch_size: int = 64,
        hparams: dict[str, Any] | None = None,
    ):
        """The settings both policy modules take; a subclass's signature adds its own and
        passes these on (``**kwargs``), and jsonargparse shows them as the subclass's keys.

        Args:
            policy: the model to train
            algorithm: the objective, a registered plugin (``class_path: dpo``); offline
                plugins and self-training train on ``lightning_rlhf.PolicyModule``, online
                ones (ppo, grpo, ...) on ``lightning_rlhf.OnlinePolicyModule``
            reference: the frozen reference model, for plugins that need one. Default: the
                policy with its LoRA adapters disabled if it has them, else a frozen copy of
                the policy's starting weights
            optimizer: AdamW and learning-rate schedule settings
            logps_chunk_size: positions per chunk when applying the output head
            compile_policy: ``torch.compile`` the policy's transformer (dynamic shapes), fusing
                its element-wise work (norms, rotary embedding, activations, residuals); the
                first step pays the compilation (about a minute for a 30M model on a small CPU;
                inductor keeps it on disk for later runs)
            disable_dropout: turn dropout off in the policy (and the critic) (``nn.Dropout`` and
                attention dropout), so chosen and rejected, policy and reference, old and new
                log-probs and values are each computed by the same function
            export_dir: when fit ends, save the policy here in Hugging Face format
            export_merged: merge LoRA adapters into the exported weights (else save the adapter)
            reward: what scores sampled text: an online plugin's rollouts, or a self-training
                plugin's Grow phase (rejection_sampling, rest)
                (``class_path: lightning_rlhf.rewards.RewardModelSource``, ``...GoldReward``,
                ``...FunctionReward``)
            generation_batch_size: rows decoded together when sampling; each subclass passes its
                own (PolicyModule's setting, the online settings' one)
            hparams: the subclass's own settings as plain data, stored after these
        """
        super().__init__()
        # Plain data only, so a checkpoint loads with torch.load(weights_only=True) and the
        # run config in W&B reads like the recipe (locals() holds exactly the arguments here).
        self.save_hyperparameters({**to_plain(PolicyModuleBase.__init__, locals(), leave_out=NOT_STORED), **(hparams or {})})
        self.policy_settings = policy
        self.reference_settings = reference
        self.algorithm = algorithm
        self.optimizer_settings = optimizer or OptimizerSettings()
        self.logps_chunk_size = logps_chunk_size
        self.compile_policy = compile_policy
        self._compiled: tuple[torch.nn.Module, torch.nn.Module] | None = None  # (decoder, its compiled form)
        self.reference_cache: ReferenceCache | None = None  # set when fit starts, or from a checkpoint
        self.disable_dropout = disable_dropout
        self.export_dir, self.export_merged = export_dir, export_merged
        self.tokenizer = load_tokenizer(policy)
        self.policy: torch.nn.Module | None = None
        self.reference_model: torch.nn.Module | None = None
        self.reward_source = reward
        self.generation_batch_size = generation_batch_size
        self.rollout_engine: RolloutEngine | None = None  # built at the first generate (see lightning_rlhf.engine)
        self._generation_seconds, self._generated_tokens = 0.0, 0
        self._reward_modes: dict[str, bool] = {}  # each reward source's mode before a validation pass

    # -- models -------------------------------------------------------------------------
    def configure_model(self) -> None:
        if self.policy is not None:
            return
        with loading_into_shards(self._trainer):  # DeepSpeed ZeRO-3 partitions weights as they load
            self.policy = load_causal_lm(self.policy_settings, trainable=True)
            self.policy.train()
            if self.disable_dropout:
                disable_dropout(self.policy)
            if self.algorithm.needs_reference and not self.uses_adapter_reference:
                # A frozen submodule (requires_grad False, eval mode, not in the optimiser): a
                # strategy shards or replicates it with the policy (see modules.sharded).
                settings = self.reference_settings or self.policy_settings
                self.reference_model = load_causal_lm(settings, trainable=False)
            self.configure_other_models()

    def configure_other_models(self) -> None:
        """Models beside the policy and the reference (the online module's critic)."""

    @classmethod
    def arguments_from_hparams(cls, hparams: dict) -> dict[str, Any]:
        """The constructor arguments of the shared settings, from a checkpoint's hyperparameters."""
        return from_plain(PolicyModuleBase.__init__, hparams, leave_out=NOT_STORED)

    @classmethod
    def from_hparams(cls, hparams: dict) -> PolicyModuleBase:
        """Rebuild a module from the hyperparameters stored in its checkpoint."""
        return cls(**cls.arguments_from_hparams(hparams))

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> PolicyModuleBase:
        """Load a module, weights included, from a Lightning checkpoint."""
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        module = cls.from_hparams(checkpoint["hyper_parameters"])
        module.configure_model()
        module.on_load_checkpoint(checkpoint)
        module.load_state_dict(checkpoint["state_dict"])
        return module

    @classmethod
    def policy_from_checkpoint(cls, path: str | Path) -> PolicyModuleBase:
        """The module with its trained policy alone, for ``export``: the reference, the
        critic and the reward source are not loaded (export writes none of them)."""
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        module = cls.from_hparams({**checkpoint["hyper_parameters"], "reward": None, "critic": None})
        module.policy = load_causal_lm(module.policy_settings, trainable=True)  # LoRA wrapped as it was trained
        prefix = "policy."
        module.policy.load_state_dict({k[len(prefix):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)})
        return module

    @property
    def uses_adapter_reference(self) -> bool:
        """The reference is the policy with adapters off: no second copy in memory."""
        return self.reference_settings is None and self.policy_settings.lora is not None

    # -- what plugins may use -------------------------------------------------------------
    def policy_logps(self, batch: dict[str, Tensor], temperature: float = 1.0, entropy: bool = False) -> SequenceLogps:
        """``temperature``: score under ``softmax(logits / T)``, the distribution sampled from;
        ``entropy``: also each position's entropy (chunked, no ``[N, T, V]`` kept)."""
        return self.rollout_forward(lambda piece: self._logps(self.policy, piece, temperature, entropy), batch)

    @torch.no_grad()
    def reference_logps(self, batch: dict[str, Tensor], temperature: float = 1.0) -> SequenceLogps:
        if not self.algorithm.needs_reference:
            raise RuntimeError(f"algorithm {self.algorithm.name!r} declares needs_reference = False")
        cached = batch.get(CACHED_REFERENCE)  # put in the batch by the data loader
        if cached is not None and temperature == 1.0:
            return SequenceLogps(cached, batch["completion_mask"][:, 1:])
        if self.reference_model is None and not self.uses_adapter_reference:
            self.reference_model = self._reload_reference()  # released after caching; needed again
        return self.rollout_forward(lambda piece: self._reference_forward(piece, temperature), batch)

    def rollout_forward(self, forward, batch: dict[str, Tensor]):
        """``forward(batch)``: the online module runs a rollout's scoring in pieces of rows."""
        return forward(batch)

    def generate(self, prompt_ids, temperature: float = 1.0, top_p: float = 1.0, max_new_tokens: int = 64, n: int = 1) -> Rollout:
        """``n`` sampled completions per prompt, prompt-major, in the training layout (timed
        for the metrics)."""
        start = time.perf_counter()
        if self.rollout_engine is None:
            self.rollout_engine = self.build_rollout_engine()
        settings = SamplingSettings(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens)
        rollout = generate_rollout(self.rollout_engine, self.tokenizer, prompt_ids, settings, self.device, n,
                                   return_logps=self.keeps_sampler_logps and top_p == 1.0)
        self._generation_seconds += time.perf_counter() - start
        self._generated_tokens += int(rollout.lengths.sum())
        return rollout

    @property
    def keeps_sampler_logps(self) -> bool:
        """Whether rollouts keep the engine's log-probabilities of the tokens it drew
        (``Rollout.sampler_logps``; the online module lets a setting choose)."""
        return False

    def build_rollout_engine(self) -> RolloutEngine:
        """What samples this module's completions (the online module lets a setting choose)."""
        return HFEngine(self.policy, self.tokenizer, self.generation_batch_size)

    def reward_sources(self) -> dict[str, RewardSource]:
        """Every reward source the module scores with, by name: the checkpoint keeps the state
        of each (``reward_state``) and validation freezes them. A module that scores with
        more (rewards monitored for the log) adds them here."""
        return {} if self.reward_source is None else {"reward": self.reward_source}

    def reward(self, prompts: list[str], completions: list[str], columns: list[dict] | None = None) -> Tensor:
        """Scores of the text from the module's reward source, ``[N]`` on the module's device;
        ``columns``: each prompt row's other columns, for sources that read them."""
        if self.reward_source is None:
            raise RuntimeError(f"algorithm {self.algorithm.name!r} needs a reward source: set the module's `reward`")
        return self.reward_source(prompts, completions, columns).to(self.device)

    def _reference_forward(self, batch: dict[str, Tensor], temperature: float) -> SequenceLogps:
        if self.reference_model is not None:
            return self._logps(self.reference_model, batch, temperature)
        with self.policy.disable_adapter():
            return self._logps(self.policy, batch, temperature)

    def _logps(self, model: torch.nn.Module, batch: dict[str, Tensor], temperature: float = 1.0, entropy: bool = False) -> SequenceLogps:
        hf_model = unwrap(model)
        decoder = self._decoder(model, hf_model)
        # Models that scale their logits in forward (Cohere, Granite) sample from the scaled
        # ones; scaling by s is dividing by a temperature of 1/s (neither has a softcap).
        temperature = temperature / logit_multiplier(hf_model.config)
        shared = shared_prompt.model_inputs(hf_model, batch)
        hidden_index = None
        if shared is not None:  # each pair in one row, the prompt once (data.shared_prompt)
            hidden = decoder(**shared, use_cache=False).last_hidden_state
            hidden_index = batch[shared_prompt.PREFIX + "index"]
        elif shared_prompt.GROUP + "index" in batch and not drops_cache(hf_model):  # each prompt once, its samples on its cache
            # completions packed to their real tokens where the model allows (not compiled: its
            # graph would be traced again for every packed length)
            config = None if self.compile_policy and model is self.policy else hf_model.config
            hidden, hidden_index = shared_prompt.group_prefix_hidden(decoder, batch, cache_argument(hf_model), config)
        else:
            # Every batch here is right-padded (data.collate), so causal attention never lets a
            # real token see the padding after it, and positions count from 0 either way: the
            # mask changes nothing the loss reads. Without it the model builds no mask, takes
            # the fused causal attention kernel, and skips transformers' host-side check of
            # the mask (`mask.all()`, a device sync at every forward).
            hidden = decoder(input_ids=batch["input_ids"], use_cache=False).last_hidden_state
        index = batch.get("logp_index")
        if index is None:
            index = completion_index(batch["completion_mask"])
        softcap = getattr(hf_model.config, "final_logit_softcapping", None)
        mask = batch["completion_mask"][:, 1:]
        if temperature != 1.0 or entropy:
            token_logps, token_entropy = selective_logps_entropy(
                hidden, batch["input_ids"], index, hf_model.get_output_embeddings(),
                chunk_size=self.logps_chunk_size, logit_softcap=softcap, temperature=temperature,
                hidden_index=hidden_index,
            )
            return SequenceLogps(token_logps, mask, token_entropy if entropy else None)
        token_logps = selective_logps(
            hidden,
            batch["input_ids"],
            index,
            hf_model.get_output_embeddings(),
            chunk_size=self.logps_chunk_size,
            logit_softcap=softcap,
            hidden_index=hidden_index,
        )
        return SequenceLogps(token_logps, mask)

    def _decoder(self, model: torch.nn.Module, hf_model) -> torch.nn.Module:
        """The transformer under the head; compiled for the policy with ``compile_policy`` (the
        reference runs once per example when cached, where compiling would not pay)."""
        decoder = hf_model.get_decoder()
        if not self.compile_policy or model is not self.policy:
            return decoder
        if self._compiled is None or self._compiled[0] is not decoder:
            self._compiled = (decoder, torch.compile(decoder, dynamic=True))
        return self._compiled[1]

    # -- the fit --------------------------------------------------------------------------
    def connect(self, datamodule: Any) -> None:
        """Hand the data module what it takes from the model, the tokenizer
        (``TextDataModule.connect``); called from ``setup``, once Lightning has attached both."""
        if callable(getattr(datamodule, "connect", None)):
            datamodule.connect(self.tokenizer)

    def reference_network(self) -> torch.nn.Module:
        """The network reference log-probs come from: the frozen copy (loaded again if it was
        released), or the policy itself when the reference is the policy with adapters off."""
        if self.reference_model is None and not self.uses_adapter_reference:
            self.reference_model = self._reload_reference()
        return self.reference_model if self.reference_model is not None else unwrap(self.policy)

    def release_reference_copy(self) -> None:
        """Drop the frozen reference copy (every row's reference log-probs are cached); a batch
        the cache misses loads it again."""
        self.reference_model = None

    def _reload_reference(self) -> torch.nn.Module:
        model = load_causal_lm(self.reference_settings or self.policy_settings, trainable=False)
        if self._trainer is not None:
            model = self.trainer.precision_plugin.convert_module(model)
        return model.to(self.device)

    def on_train_start(self) -> None:
        if self.reference_model is not None:
            self.reference_model.eval()

    def on_validation_start(self) -> None:
        # Validation rollouts are scored as training's are, but must not teach a reward
        # source anything (running whitening statistics): the next training step, and a
        # run resumed from a checkpoint, would otherwise depend on when validation ran.
        sources = self.reward_sources()
        self._reward_modes = {name: source.training for name, source in sources.items()}
        for source in sources.values():
            source.eval()

    def on_validation_end(self) -> None:
        for name, source in self.reward_sources().items():
            source.train(self._reward_modes.get(name, True))

    def on_fit_end(self) -> None:
        if not self.export_dir:
            return
        with full_weights(self.trainer, self.policy):  # every process takes part in gathering shards
            if self.trainer.is_global_zero:
                self.save_pretrained(self.export_dir, merged=self.export_merged)

    # -- checkpoints and export ----------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # The frozen reference is rebuilt from its settings; storing it would double the file.
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith(REFERENCE_PREFIX)]:
            del state[key]
        if callable(getattr(self.algorithm, "state_dict", None)):  # PPO's adaptive KL coefficient, a self-training phase
            checkpoint["algorithm_state"] = self.algorithm.state_dict()
        if self.reference_cache is not None:  # a resumed run reuses it instead of recomputing
            checkpoint["reference_cache"] = self.reference_cache.state_dict()
        reward_state = {name: state for name, source in self.reward_sources().items() if (state := source.state_dict())}
        if reward_state:  # e.g. SafetyGatedReward's running whitening statistics
            checkpoint["reward_state"] = reward_state

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "algorithm_state" in checkpoint:
            if not callable(getattr(self.algorithm, "load_state_dict", None)):
                raise ValueError(f"the checkpoint holds state for the algorithm, but {type(self.algorithm).__name__} "
                                 "has no load_state_dict()")
            self.algorithm.load_state_dict(checkpoint["algorithm_state"])
        if "reference_cache" in checkpoint:
            self.reference_cache = ReferenceCache.from_state_dict(checkpoint["reference_cache"])
        sources = self.reward_sources()
        for name, state in checkpoint.get("reward_state", {}).items():
            if name in sources:
                sources[name].load_state_dict(state)
            else:  # e.g. a checkpoint evaluated without its reward
                log.warning("the checkpoint holds the state of the reward source %r, which this module does not score with: "
                            "not loaded", name)
        if self.reference_model is not None:
            for key, value in self.reference_model.state_dict().items():
                checkpoint["state_dict"].setdefault(REFERENCE_PREFIX + key, value)

    def save_pretrained(self, directory: str | Path, merged: bool = True) -> Path:
        """Write the policy in Hugging Face format, loadable by ``from_pretrained``."""
        return export_policy(self.policy, self.tokenizer, directory, merged)


def algorithm_argument(args: tuple, kwargs: dict) -> Algorithm | None:
    """The ``algorithm`` of a constructor call, before the constructor runs."""
    return kwargs["algorithm"] if "algorithm" in kwargs else args[1] if len(args) > 1 else None


def drops_cache(model) -> bool:
    """transformers' layers drop a KV cache under gradient checkpointing while they train
    with grad (``GradientCheckpointingLayer``), and layers a strategy wrapped for activation
    checkpointing (FSDP's ``activation_checkpointing_policy``) run again in the backward,
    without the cache's state or the forward's attention: a forward that continues from a
    cache must then run another way."""
    if not (model.training and torch.is_grad_enabled()):
        return False
    checkpointing = getattr(model, "is_activation_checkpointing", None)  # is_gradient_checkpointing before 5.x
    if checkpointing is None:
        checkpointing = getattr(model, "is_gradient_checkpointing", False)
    return bool(checkpointing) or any(isinstance(module, ActivationWrapper) for module in model.modules())


def export_policy(model: torch.nn.Module, tokenizer, directory: str | Path, merged: bool = True) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if is_peft_model(model) and merged:
        import copy

        if getattr(unwrap(model), "is_loaded_in_4bit", False):
            raise ValueError("cannot merge LoRA into 4-bit weights here; export the adapter (merged: false)")
        merged_model = copy.deepcopy(model).merge_and_unload()
        merged_model.save_pretrained(directory, safe_serialization=True)
    else:
        model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    log.info("exported the policy to %s", directory)
    return directory


# The frozen reference is in eval mode on purpose, and a run without validation data
# returns no validation loader; Lightning warns about both.
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
warnings.filterwarnings("ignore", message=r"Total length of `list` across ranks is zero")
