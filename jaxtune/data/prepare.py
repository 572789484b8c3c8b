"""``jaxtune prepare``: local instruction files -> an ArrayRecord dataset read by random access.

A corpus like BELLE's 2M records is validated once, streamed into a tensorflow-datasets builder
(``GeneratorBasedBuilder`` with ``file_format="array_record"``, no TensorFlow needed), and afterwards read record by
record through :class:`PreparedRecords`, so it is never loaded into memory. Each stored example is one validated
:class:`~jaxtune.data.formats.Record` as JSON. Beside the TFDS folder, ``jaxtune_prepared.json`` records the input,
the format, the record count per ability and the invalid records skipped.
"""

from __future__ import annotations

import functools
import json
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

from jaxtune.data.formats import OnError, Record, SkipReport, check_format, iter_records, record_from_json, record_to_json

PREPARED_META = "jaxtune_prepared.json"
_BUILDER_NAME = "jaxtune_records"
_VERSION = "1.0.0"
_SPLIT = "train"


@dataclass
class PrepareResult:
    """What ``prepare_dataset`` wrote."""

    output_dir: Path
    num_records: int
    abilities: dict[str, int]
    skipped: SkipReport

    def summary(self) -> str:
        counts = ", ".join(f"{k} {v}" for k, v in self.abilities.items())
        return (f"prepared {self.num_records} records in {self.output_dir} ({counts}); "
                f"{self.skipped.summary()}")


@functools.lru_cache(maxsize=None)
def _builder_class():
    """The TFDS builder, defined on first use so that importing jaxtune.data does not import tensorflow_datasets."""
    import tensorflow_datasets as tfds

    # Not registered by name: it is only ever instantiated here, and read back with builder_from_directory.
    class JaxtuneRecords(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        """Validated jaxtune records, one JSON document per example, in input order."""

        VERSION = tfds.core.Version(_VERSION)

        # TFDS locates a builder's source through importlib_resources, which tensorflow-datasets does not install
        # on Python >= 3.9; this file is the builder's code.
        @tfds.core.utils.classproperty
        @classmethod
        def code_path(cls):
            from etils import epath

            return epath.Path(__file__)

        def __init__(self, *, records: Optional[Iterator[Record]] = None, **kwargs):
            self._records = records
            super().__init__(**kwargs)

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                description="jaxtune instruction records (JSON)",
                features=tfds.features.FeaturesDict({"record": tfds.features.Text()}),
                disable_shuffling=True,  # keep input order: record i of the dataset is the i-th valid input record
            )

        def _split_generators(self, dl_manager):
            return {_SPLIT: self._generate_examples()}

        def _generate_examples(self):
            if self._records is None:
                raise RuntimeError("JaxtuneRecords was built without records to write")
            for i, record in enumerate(self._records):
                yield i, {"record": record_to_json(record)}

    return JaxtuneRecords


def prepare_dataset(
    input_path: Union[str, Path],
    output_dir: Union[str, Path],
    format: str = "doit",
    *,
    on_error: OnError = "raise",
    overwrite: bool = False,
) -> PrepareResult:
    """Validate the records at ``input_path`` (a file or a folder of data files) and write them as an ArrayRecord
    dataset in ``output_dir``; ``data.path: <output_dir>`` then trains on it.

    Raises DataError for an invalid record under ``on_error="raise"`` (nothing is written then), and FileExistsError
    when ``output_dir`` already holds a prepared dataset and ``overwrite`` is False.
    """
    import tensorflow_datasets as tfds

    check_format(format)
    output_dir = Path(output_dir)
    meta_path = output_dir / PREPARED_META
    if (meta_path.exists() or (output_dir / _BUILDER_NAME).exists()) and not overwrite:
        raise FileExistsError(f"{output_dir} already holds a prepared dataset (pass overwrite=True to replace it)")
    if overwrite:
        if (output_dir / _BUILDER_NAME).exists():
            shutil.rmtree(output_dir / _BUILDER_NAME)
        meta_path.unlink(missing_ok=True)
    output_dir.mkdir(parents=True, exist_ok=True)

    report = SkipReport()
    abilities: Counter = Counter()

    def counted() -> Iterator[Record]:
        for record in iter_records(input_path, format, on_error=on_error, report=report):
            abilities[record.ability] += 1
            yield record

    tfds.disable_progress_bar()
    builder = _builder_class()(records=counted(), data_dir=str(output_dir), file_format="array_record")
    try:
        builder.download_and_prepare()
    except BaseException:
        shutil.rmtree(output_dir / _BUILDER_NAME, ignore_errors=True)
        raise
    num = sum(abilities.values())
    meta = {
        "input": str(input_path),
        "format": format,
        "num_records": num,
        "abilities": dict(sorted(abilities.items())),
        "skipped": report.to_dict(),
        "dataset_dir": str(Path(builder.data_dir).relative_to(output_dir)),
    }
    meta_path.write_text(json.dumps(meta, ensure_ascii=False, indent=1), encoding="utf-8")
    return PrepareResult(output_dir, num, meta["abilities"], report)


def is_prepared_dataset(path: Union[str, Path, None]) -> bool:
    """True when ``path`` is a folder written by :func:`prepare_dataset`."""
    return path is not None and (Path(path) / PREPARED_META).is_file()


class PreparedRecords:
    """Random access to a prepared dataset's records (a grain ``RandomAccessDataSource``); picklable, opened lazily
    in each process."""

    def __init__(self, path: Union[str, Path]):
        self.path = Path(path)
        meta_path = self.path / PREPARED_META
        if not meta_path.is_file():
            raise FileNotFoundError(f"{self.path} is not a prepared dataset (no {PREPARED_META}; run jaxtune prepare)")
        self.meta = json.loads(meta_path.read_text(encoding="utf-8"))
        self._len = int(self.meta["num_records"])
        self._source = None

    @property
    def abilities(self) -> list[str]:
        return sorted(self.meta["abilities"])

    def _open(self):
        if self._source is None:
            import tensorflow_datasets as tfds
            from tensorflow_datasets.core import decode

            builder = tfds.builder_from_directory(str(self.path / self.meta["dataset_dir"]))
            # Raw bytes, parsed below: TFDS's generic feature decoding costs ~40 us a record, the proto parse ~1 us.
            self._source = builder.as_data_source(_SPLIT, deserialize_method=decode.DeserializeMethod.RAW_BYTES)
            if len(self._source) != self._len:
                raise ValueError(f"{self.path}: {len(self._source)} stored records but {PREPARED_META} says {self._len}")
        return self._source

    @staticmethod
    def _decode(raw: bytes) -> Record:
        from tensorflow_datasets.proto import tf_example_pb2

        example = tf_example_pb2.Example.FromString(raw)
        return record_from_json(example.features.feature["record"].bytes_list.value[0])

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> Record:
        return self._decode(self._open()[int(index)])

    def __getitems__(self, indices: Sequence[int]) -> list[Record]:
        """Records at ``indices``; one call reads many records far faster than one call per record."""
        if len(indices) == 0:
            return []
        source = self._open()
        return [self._decode(raw) for raw in source.__getitems__([int(i) for i in indices])]

    def __iter__(self) -> Iterator[Record]:
        source = self._open()
        step = 1024
        for start in range(0, self._len, step):
            yield from self.__getitems__(range(start, min(self._len, start + step)))

    def __getstate__(self) -> dict:
        return {"path": self.path, "meta": self.meta, "_len": self._len, "_source": None}

    def __repr__(self) -> str:
        return f"PreparedRecords({self.path}, {self._len} records)"
