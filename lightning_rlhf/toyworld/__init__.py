"""An offline toy world in which preference alignment can be measured.

Like the DPO paper's sentiment experiment, but with nothing to download: a seeded corpus
of short reviews (`corpus`), a BPE tokenizer trained on it (`tokenizer`), a small Llama
pretrained and then fine-tuned on it in-process (`models`, registered as
``builtin:toyworld-pretrained`` and ``builtin:toyworld``), and a gold reward, VADER's
sentiment of the completion (`gold`). The fine-tuned model writes positive and negative
continuations about equally often; an alignment method should raise the mean gold reward
on held-out prompts.

The submodules are imported on use (``from lightning_rlhf.toyworld.gold import
gold_reward``), so that reading the corpus or scoring text does not load torch.
"""
