# The metadata lives in pyproject.toml; this file only maps the top-level `plugins/`
# folder to the import name `lightning_rlhf_plugins` (a bare `plugins` would collide
# with other packages), which pyproject's package discovery cannot express.
from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["lightning_rlhf", "lightning_rlhf.*"]) + ["lightning_rlhf_plugins"],
    package_dir={"lightning_rlhf_plugins": "plugins"},
)
