"""Offline toy worlds in which alignment can be measured.

Like the DPO paper's sentiment experiment, but with nothing to download: a seeded corpus
of short reviews (`corpus`), a BPE tokenizer trained on it (`tokenizer`), a small Llama
pretrained and then fine-tuned on it in-process (`models`, registered as
``builtin:toyworld-pretrained`` and ``builtin:toyworld``), and a gold reward, VADER's
sentiment of the completion (`gold`). The fine-tuned model writes positive and negative
continuations about equally often; an alignment method should raise the mean gold reward
on held-out prompts.

The checkable world (`arithmetic`: ``builtin:arithmetic``) asks for sums worked step by
step; its corpus is careless, so its SFT model is right about half the time, and a reward
that checks the answer (``lightning_rlhf.rewards.answers.exact_answer``) measures RL with
verifiable rewards as held-out accuracy.

The submodules are imported on use (``from lightning_rlhf.toyworld.gold import
gold_reward``), so that reading the corpus or scoring text does not load torch.
"""
