"""Pre-training data for flaxbert.

* `flaxbert.data.prepare`: text files or a TFDS corpus -> tokenized TFRecord shards plus a
  manifest (`flaxbert prepare`); NSP (BERT), SOP (ALBERT) and full-sentences (RoBERTa) modes.
* `flaxbert.data.pipeline`: those shards -> deterministic, resumable, host-sharded tf.data
  batches, masked in-graph by `flaxbert.data.masking`.
* `flaxbert.data.bench`: how many masked sequences per second the pipeline delivers.

Nothing here is imported by this package file, so `import flaxbert.data.prepare` does not pull
in TensorFlow (its worker processes never need it).
"""
