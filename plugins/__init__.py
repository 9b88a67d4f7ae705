"""Built-in alignment plugins, one file each, installed as ``lightning_rlhf_plugins`` and
discovered through the ``lightning_rlhf.plugins`` entry-point group like any other."""
