"""What pyproject.toml cannot say: configs/ ships inside the package as `flaxbert.recipes`.

configs/ stays where people read and edit the recipes; installed, they are
`flaxbert pretrain --config flaxbert:<recipe>[:arg]` from any directory.
"""
from setuptools import find_packages, setup

setup(packages=[*find_packages(include=["flaxbert", "flaxbert.*"]), "flaxbert.recipes"],
      package_dir={"flaxbert.recipes": "configs"})
