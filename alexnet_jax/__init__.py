"""alexnet_jax: the 2012 two-tower AlexNet in JAX/Flax.

Modules (one concern each):
  model      -- the network (towers, LRN, pooling, dropout).
  parallel   -- the data x model mesh, partition specs, the shard_map wrapper
                and every cross-tower collective.
  optim      -- the paper's SGD with momentum and weight decay; schedules.
  steps      -- train/eval steps, loss and top-k errors.
  weights    -- .npz weight import/export in the Caffe bvlc_alexnet layout.
  data/      -- the ILSVRC-2010 TFDS builder and the generated mini data set.
  input_pipeline -- the paper's tf.data pipeline.

Only `data/` and `input_pipeline` import TensorFlow.
"""
