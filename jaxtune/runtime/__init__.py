"""What a JAX process does around its programs rather than in them: the XLA compiles it counts and the persistent
compilation cache it reads (:mod:`jaxtune.runtime.compiles`), and whether it runs on a Cloud TPU VM whose slice
spans hosts (:mod:`jaxtune.runtime.tpu_vm`); shared by training and evaluation."""
