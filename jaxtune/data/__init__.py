"""Instruction data: record types, JSON Lines and JSON-array reading, file formats and validation, tokenizers, chat
templates and loss masks, the DoIT study's data selections and the BELLE study's volumes, ArrayRecord preparation,
and the grain pipeline (with its worker processes) that turns records into training batches.

Entry points: :func:`jaxtune.data.pipeline.build_train_pipeline`, :func:`jaxtune.data.pipeline.build_eval_pipeline`,
:func:`jaxtune.data.prepare.prepare_dataset`, :func:`jaxtune.data.tokenizer.load_tokenizer`,
:func:`jaxtune.data.templates.make_template`, :func:`jaxtune.data.mixtures.select_records`,
:func:`jaxtune.data.belle_volumes.select_belle` and
:func:`jaxtune.data.mixtures.write_manifest`. Bad data raises :class:`jaxtune.data.records.DataError`, whose message
names the file, line and field.
"""
