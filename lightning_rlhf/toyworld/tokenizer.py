"""The toy world's tokenizer: byte-level BPE trained on the toy corpus.

Byte-level means every string can be encoded and ``decode(encode(text))`` gives the text
back exactly; training merges on the corpus makes most of its words one token, so a
prompt is about ten tokens and a completion about fifteen, which keeps sampling cheap.

The tokenizer prepends ``<|bos|>`` to every encoded text (as Llama tokenizers do); the
models are trained that way, so anything that calls ``tokenizer(prompt)`` feeds them what
they expect. It never appends ``<|eos|>``: the fine-tuned model writes that itself.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from lightning_rlhf.toyworld.corpus import pretraining_texts

PAD, BOS, EOS = "<|pad|>", "<|bos|>", "<|eos|>"
SPECIAL_TOKENS = [PAD, BOS, EOS]


def train_bpe(texts: list[str], vocab_size: int = 1536) -> Tokenizer:
    """Byte-level BPE merges learned from `texts`; the special tokens get ids 0, 1, 2.

    The trainer is deterministic for a given list of texts, so the tokenizer depends on
    nothing but the corpus (and so the seed)."""
    backend = Tokenizer(models.BPE())
    # The GPT-2 split rule keeps a word's leading space with it (" good"), so a prompt and
    # a completion that begins with a space tokenize the same apart as together.
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    return backend


def wrap_tokenizer(backend: Tokenizer) -> PreTrainedTokenizerFast:
    """The transformers tokenizer around a trained backend, adding BOS on encode."""
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        add_bos_token=True,
        add_eos_token=False,
        clean_up_tokenization_spaces=False,
        # Generation pads on the left so every prompt ends where sampling starts.
        padding_side="left",
        model_max_length=128,
    )


def build_tokenizer(seed: int = 0, num_texts: int = 20_000, vocab_size: int = 1536) -> PreTrainedTokenizerFast:
    """Train the toy world's tokenizer on `num_texts` corpus texts drawn with `seed`."""
    return wrap_tokenizer(train_bpe(pretraining_texts(num_texts, seed), vocab_size))
