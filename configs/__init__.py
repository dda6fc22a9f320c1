"""The recipes, installed as the package `flaxbert.recipes` (see configs/README.md).

`flaxbert pretrain --config flaxbert:bert_base:phase1` runs configs/bert_base.py from any
directory; each file is read by path, so nothing here imports them.
"""
