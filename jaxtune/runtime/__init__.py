"""What a JAX process does around its programs rather than in them: the XLA compiles it counts and the persistent
compilation cache it reads (:mod:`jaxtune.runtime.compiles`); shared by training and evaluation."""
