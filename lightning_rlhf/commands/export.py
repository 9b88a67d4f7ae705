"""``lightning-rlhf export``: a checkpoint's policy or reward model in Hugging Face format."""

from __future__ import annotations

import argparse

from lightning_rlhf.modules.reward_module import checkpoint_module_class


def export(argv: list[str]) -> int:
    """Write a trained policy or reward model from a Lightning checkpoint in Hugging Face format."""
    parser = argparse.ArgumentParser(prog="lightning-rlhf export", description=export.__doc__)
    parser.add_argument("checkpoint", help="a .ckpt file written by `lightning-rlhf fit`")
    parser.add_argument("output", help="directory to write (loadable with from_pretrained)")
    parser.add_argument("--adapter-only", action="store_true", help="save the LoRA adapter alone, not merged weights")
    args = parser.parse_args(argv)
    # Only what is written is loaded: a policy without its reference, critic or reward model.
    module = checkpoint_module_class(args.checkpoint).policy_from_checkpoint(args.checkpoint)
    module.save_pretrained(args.output, merged=not args.adapter_only)
    print(f"wrote {args.output}")
    return 0
