"""Checkpoints on Orbax, one room per job:

- :mod:`~jaxtune.checkpoint.layout`: the on-disk layout (folder, file and item names; where a run keeps them);
- :mod:`~jaxtune.checkpoint.errors`: CheckpointError and the boundary that turns Orbax's errors into one line;
- :mod:`~jaxtune.checkpoint.finite`: the finiteness scan of restored arrays;
- :mod:`~jaxtune.checkpoint.tokenizer_files`: the tokenizer files and added tokens a checkpoint carries;
- :mod:`~jaxtune.checkpoint.params`: params-only checkpoints (save, load, restore_model);
- :mod:`~jaxtune.checkpoint.train_state`: the train-state manager (train state + data iterator);
- :mod:`~jaxtune.checkpoint.epochs`: the epoch checkpoint manager and which checkpoint holds an epoch.
"""
