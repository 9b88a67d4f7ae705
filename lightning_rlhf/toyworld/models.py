"""Build the toy world's models in-process: a base model pretrained on the toy corpus and
the supervised fine-tuned (SFT) model that is the alignment pipeline's starting policy.

The base model learns the corpus with plain next-token loss on texts laid end to end and
never sees an EOS: like a real base model, it runs on from one text into the next.
Fine-tuning on (prompt, completion + EOS) pairs,
with the loss on the completion only, teaches it to answer a prompt with one continuation
and stop. Both sample positive and negative continuations about equally often, since the
corpus does; alignment is then measured by how far a method moves the gold reward.

Everything is drawn from one seed (corpus, tokenizer, initial weights, batch order), and
CPU training with the same thread count is bit-for-bit repeatable, so the same seed gives
identical weights. The default sizes build both models in a few minutes on two CPU cores;
tests pass a far smaller `WorldConfig`.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from lightning_rlhf.models.builtin import resolve, seeded
from lightning_rlhf.toyworld import arithmetic, corpus
from lightning_rlhf.toyworld.tokenizer import train_bpe, wrap_tokenizer

IGNORE_INDEX = -100


@dataclass(frozen=True)
class WorldConfig:
    """Sizes of the toy world. The defaults are the ``builtin:toyworld`` models."""

    seed: int = 0
    # Tokenizer.
    tokenizer_texts: int = 20_000
    vocab_size: int = 1536
    # Model shape.
    hidden_size: int = 160
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 640
    max_position_embeddings: int = 128
    # Pretraining on full texts.
    pretrain_texts: int = 40_000
    pretrain_row_length: int = 64
    pretrain_steps: int = 400
    pretrain_batch_size: int = 32
    pretrain_lr: float = 3e-3
    # Supervised fine-tuning on (prompt, completion) pairs.
    sft_pairs: int = 10_000
    sft_steps: int = 150
    sft_batch_size: int = 64
    sft_lr: float = 1e-3
    # Sampling defaults written into generation_config.json.
    max_new_tokens: int = 32


def build_model(tokenizer: PreTrainedTokenizerFast, config: WorldConfig) -> LlamaForCausalLM:
    """A randomly initialised Llama-shaped causal LM, seeded by ``config.seed``."""
    model_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_heads,
        max_position_embeddings=config.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        # Tied embeddings: at this size the embedding table is a large share of the weights.
        tie_word_embeddings=True,
    )
    torch.manual_seed(config.seed)
    return LlamaForCausalLM(model_config)


def count_parameters(model: torch.nn.Module) -> int:
    """Distinct parameters (a tied embedding counts once)."""
    return sum(p.numel() for p in model.parameters())


def pad_batch(
    sequences: list[list[int]], labels: list[list[int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token ids with `pad_id` and labels with IGNORE_INDEX.

    Right padding needs no attention mask for training: causal attention already keeps
    real tokens from seeing the pads after them, and the pads carry no loss."""
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    targets = torch.full((len(sequences), width), IGNORE_INDEX, dtype=torch.long)
    for row, (sequence, label) in enumerate(zip(sequences, labels)):
        input_ids[row, : len(sequence)] = torch.tensor(sequence)
        targets[row, : len(label)] = torch.tensor(label)
    return input_ids, targets


def cosine_schedule(optimizer: torch.optim.Optimizer, steps: int, warmup: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup, then cosine decay to a tenth of the peak rate."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train_causal_lm(
    model: LlamaForCausalLM,
    examples: list[tuple[list[int], list[int]]],
    pad_id: int,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    progress: str | None = None,
) -> list[float]:
    """Next-token training on (input_ids, labels) examples; labels are IGNORE_INDEX where
    no loss is wanted. Batches are drawn with a seeded generator so the run repeats.
    Returns the loss of every step. ``progress``: a progress bar with this description
    (the build takes minutes on a CPU)."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.01)
    scheduler = cosine_schedule(optimizer, steps, warmup=max(1, steps // 20))
    model.train()
    losses = []
    # Quiet without a description, or when the output is not a terminal (a log file, CI).
    bar = tqdm(total=steps, desc=progress, unit="step", mininterval=2.0, dynamic_ncols=True, disable=None if progress else True)
    for step in range(steps):
        indices = torch.randint(len(examples), (batch_size,), generator=generator).tolist()
        input_ids, labels = pad_batch(
            [examples[i][0] for i in indices], [examples[i][1] for i in indices], pad_id
        )
        loss = model(input_ids=input_ids, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        bar.update()
        if step % 20 == 0:
            bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
    bar.close()
    model.eval()
    return losses


def pretraining_examples(
    tokenizer: PreTrainedTokenizerFast, texts: list[str], row_length: int
) -> list[tuple[list[int], list[int]]]:
    """Texts packed into rows of `row_length` tokens, loss on every token.

    Each text is ``<|bos|> text`` with no EOS, as in a raw text corpus; the texts are
    laid end to end and cut into equal rows, so no compute goes to padding (the texts
    are half the length of the longest, so padded batches would waste about as much
    as they use). The model learns that a new text begins after a full stop."""
    stream = [token for ids in tokenizer(texts)["input_ids"] for token in ids]
    rows = [stream[start : start + row_length] for start in range(0, len(stream) - row_length + 1, row_length)]
    return [(row, row) for row in rows]


def sft_examples(
    tokenizer: PreTrainedTokenizerFast, pairs: list[tuple[str, str]]
) -> list[tuple[list[int], list[int]]]:
    """``<|bos|> prompt completion <|eos|>`` with loss on the completion and EOS only."""
    prompt_ids = tokenizer([p for p, _ in pairs])["input_ids"]
    completion_ids = tokenizer([c for _, c in pairs], add_special_tokens=False)["input_ids"]
    examples = []
    for prompt, completion in zip(prompt_ids, completion_ids):
        completion = completion + [tokenizer.eos_token_id]
        examples.append((prompt + completion, [IGNORE_INDEX] * len(prompt) + completion))
    return examples


def sampling_config(tokenizer: PreTrainedTokenizerFast, config: WorldConfig) -> GenerationConfig:
    """Plain sampling at temperature 1 from the full distribution (no top-k/top-p), so
    that generated text follows the policy whose log-probabilities are trained."""
    return GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=True,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        max_new_tokens=config.max_new_tokens,
    )


def save_world_model(
    directory: str | Path,
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    config: WorldConfig,
    losses: list[float],
) -> None:
    """Write model, tokenizer, sampling defaults and a record of how they were built."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.generation_config = sampling_config(tokenizer, config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    record = {
        "config": asdict(config),
        "parameters": count_parameters(model),
        "first_loss": losses[0] if losses else None,
        "final_loss": sum(losses[-20:]) / len(losses[-20:]) if losses else None,
    }
    (directory / "toyworld.json").write_text(json.dumps(record, indent=2) + "\n")


def build_pretrained_model(directory: str | Path, config: WorldConfig = WorldConfig(), world: ModuleType = corpus) -> None:
    """Train the tokenizer and pretrain a fresh model on corpus texts; write both.

    ``world``: the world's corpus, a module with ``pretraining_texts(n, seed)`` and
    ``sft_pairs(n, seed)``: the sentiment world's (``toyworld.corpus``) or the checkable
    world's (``toyworld.arithmetic``)."""
    tokenizer = wrap_tokenizer(train_bpe(world.pretraining_texts(config.tokenizer_texts, config.seed), config.vocab_size))
    model = build_model(tokenizer, config)
    texts = world.pretraining_texts(config.pretrain_texts, config.seed)
    examples = pretraining_examples(tokenizer, texts, config.pretrain_row_length)
    losses = train_causal_lm(
        model,
        examples,
        tokenizer.pad_token_id,
        config.pretrain_steps,
        config.pretrain_batch_size,
        config.pretrain_lr,
        # Batch order differs from the fine-tuning run's, and from other seeds'.
        seed=random.Random(f"pretrain-batches-{config.seed}").getrandbits(63),
        progress=f"toy world (seed {config.seed}): pretraining",
    )
    save_world_model(directory, model, tokenizer, config, losses)


def build_sft_model(
    directory: str | Path, pretrained_directory: str | Path, config: WorldConfig = WorldConfig(), world: ModuleType = corpus
) -> None:
    """Fine-tune the pretrained model in `pretrained_directory` on (prompt, completion)
    pairs so it answers a prompt with one continuation and EOS; write the result."""
    tokenizer = PreTrainedTokenizerFast.from_pretrained(pretrained_directory)
    model = LlamaForCausalLM.from_pretrained(pretrained_directory, dtype=torch.float32)
    examples = sft_examples(tokenizer, world.sft_pairs(config.sft_pairs, config.seed))
    losses = train_causal_lm(
        model,
        examples,
        tokenizer.pad_token_id,
        config.sft_steps,
        config.sft_batch_size,
        config.sft_lr,
        seed=random.Random(f"sft-batches-{config.seed}").getrandbits(63),
        progress=f"toy world (seed {config.seed}): SFT",
    )
    save_world_model(directory, model, tokenizer, config, losses)


def build_world(directory: str | Path, config: WorldConfig = WorldConfig(), world: ModuleType = corpus) -> tuple[Path, Path]:
    """Build both models under `directory` (``pretrained/`` and ``sft/``), outside the
    built-in cache; returns their paths. Tests use this with a small config."""
    directory = Path(directory)
    pretrained, sft = directory / "pretrained", directory / "sft"
    build_pretrained_model(pretrained, config, world)
    build_sft_model(sft, pretrained, config, world)
    return pretrained, sft


# ``builtin:toyworld-pretrained`` and ``builtin:toyworld`` (named in lightning_rlhf.models.builtin).
# ``builtin:toyworld-seed<N>``: the same world drawn from another seed (corpus, tokenizer,
# initialisation, batch order), so that a result can be repeated over builds of the world
# and not only over what is trained on one build.
def write_pretrained(directory: Path, seed: int = 0) -> None:
    build_pretrained_model(directory, WorldConfig(seed=seed))


def write_sft(directory: Path, seed: int = 0) -> None:
    build_sft_model(directory, resolve(seeded("builtin:toyworld-pretrained", seed)), WorldConfig(seed=seed))


# The checkable world (``toyworld.arithmetic``): ``builtin:arithmetic-pretrained`` and
# ``builtin:arithmetic`` (and ``-seed<N>``). Its texts are short and its vocabulary small
# (digits, a few words), so the model is smaller than the sentiment world's and trains longer.
ARITHMETIC = WorldConfig(
    tokenizer_texts=5_000,
    vocab_size=320,
    hidden_size=128,
    num_layers=4,
    num_heads=4,
    intermediate_size=512,
    pretrain_texts=60_000,
    pretrain_steps=500,
    pretrain_batch_size=48,
    pretrain_lr=3e-3,
    sft_pairs=40_000,
    sft_steps=900,
    sft_batch_size=64,
    sft_lr=1e-3,
    max_new_tokens=40,
)


def arithmetic_config(seed: int) -> WorldConfig:
    return WorldConfig(**{**asdict(ARITHMETIC), "seed": seed})


def write_arithmetic_pretrained(directory: Path, seed: int = 0) -> None:
    build_pretrained_model(directory, arithmetic_config(seed), arithmetic)


def write_arithmetic_sft(directory: Path, seed: int = 0) -> None:
    pretrained = resolve(seeded("builtin:arithmetic-pretrained", seed))
    build_sft_model(directory, pretrained, arithmetic_config(seed), arithmetic)
