"""``jaxtune prepare``: local instruction files -> an ArrayRecord dataset read by random access.

A corpus like BELLE's 2M records is validated once, streamed into a tensorflow-datasets builder
(``GeneratorBasedBuilder`` with ``file_format="array_record"``, no TensorFlow needed), and afterwards read record by
record through :class:`PreparedRecords`, so it is never loaded into memory. Each stored example is one validated
:class:`~jaxtune.data.records.Record` as JSON, in input order. Beside the TFDS folder, ``jaxtune_prepared.json``
records the input, the format, the record count per ability and the invalid records skipped.

The input is written as consecutive TFDS splits ``part0``, ``part1``... of about 64 MB of input each, read back
as ``part0+part1+...``. TFDS keeps up to 1 GB of a split in memory before spilling to disk buckets, and that spill
path needs TensorFlow; parts keep every split in memory-sized pieces, so preparing needs neither TensorFlow nor
memory that grows with the corpus.
"""

from __future__ import annotations

import functools
import json
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

from jaxtune.data.formats import (
    OnError,
    RecordCollector,
    check_format,
    list_data_files,
    read_json_lines,
    read_raw_entries,
)
from jaxtune.data.jsonl import is_json_array_file
from jaxtune.data.records import DataError, RawEntry, Record, SkipReport, record_from_json, record_to_json
from jaxtune.paths import as_path, local_path

PREPARED_META = "jaxtune_prepared.json"
_BUILDER_NAME = "jaxtune_records"
_VERSION = "1.0.0"
PART_BYTES = 64 << 20
"""Input bytes per TFDS split (well under TFDS's 1 GB in-memory limit even after JSON re-encoding)."""


@dataclass(frozen=True)
class _Piece:
    """Lines [first_line, ...) of a file between two byte offsets (a whole file for a JSON array)."""

    path: Path
    start: int = 0
    stop: Optional[int] = None
    first_line: int = 1
    max_records: int = 0
    """An upper bound of the records in the piece: its lines, or (JSON array) its bytes / 16."""

    def entries(self) -> Iterator[RawEntry]:
        if self.stop is None and self.start == 0 and is_json_array_file(self.path):
            return read_raw_entries(self.path)
        return read_json_lines(self.path, self.start, self.stop, self.first_line)


def plan_parts(input_path: Union[str, Path], part_bytes: int = PART_BYTES) -> list[list[_Piece]]:
    """Cut the input into parts of about ``part_bytes``, at line boundaries (one scan of the bytes, no parsing)."""
    parts: list[list[_Piece]] = [[]]
    size = 0

    def close_part() -> None:
        nonlocal size
        if parts[-1]:
            parts.append([])
            size = 0

    for path in list_data_files(input_path):
        if is_json_array_file(path):  # parsed whole: one piece
            n = path.stat().st_size
            parts[-1].append(_Piece(path, max_records=n // 16 + 1))
            size += n
            if size >= part_bytes:
                close_part()
            continue
        start, offset, line, first_line = 0, 0, 0, 1
        with open(path, "rb") as f:
            for raw in f:
                offset += len(raw)
                line += 1
                size += len(raw)
                if size >= part_bytes:
                    parts[-1].append(_Piece(path, start, offset, first_line, line - first_line + 1))
                    close_part()
                    start, first_line = offset, line + 1
        if offset > start:
            parts[-1].append(_Piece(path, start, None, first_line, line - first_line + 1))
    if not parts[-1]:
        parts.pop()
    return parts


@dataclass
class PrepareResult:
    """What ``prepare_dataset`` wrote."""

    output_dir: Path
    num_records: int
    abilities: dict[str, int]
    skipped: SkipReport

    def summary(self) -> str:
        counts = ", ".join(f"{k} {v}" for k, v in self.abilities.items())
        return f"prepared {self.num_records} records in {self.output_dir} ({counts}); {self.skipped.summary()}"


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

        def __init__(
            self,
            *,
            parts: Sequence[list[_Piece]] = (),
            collector: Optional[RecordCollector] = None,
            abilities: Optional[Counter] = None,
            **kwargs,
        ):
            self._parts = list(parts)
            self._collector = collector
            self._abilities = abilities
            super().__init__(**kwargs)

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                description="jaxtune instruction records (JSON)",
                features=tfds.features.FeaturesDict({"record": tfds.features.Text()}),
                disable_shuffling=True,  # keep input order: record i of the dataset is the i-th valid input record
            )

        def _split_generators(self, dl_manager):
            return {f"part{k}": self._generate_examples(k) for k in range(len(self._parts))}

        def _generate_examples(self, part: int):
            pieces = self._parts[part]
            # With shuffling disabled TFDS orders a split by key: keys spread over TFDS's 128-bit key range in input
            # order.
            bound = sum(p.max_records for p in pieces)
            step = 2**128 // max(1, bound)
            i = 0
            for piece in pieces:
                for record in self._collector.iter_entries(piece.entries()):
                    if i >= bound:
                        raise RuntimeError(f"more records than the {bound} bounded from the input size")
                    self._abilities[record.ability] += 1
                    yield i * step, {"record": record_to_json(record)}
                    i += 1
            if i == 0:
                where = ", ".join(f"{p.path}:{p.first_line}" for p in pieces)
                raise DataError(where, 0, "", f"no valid record in this part of the input (~{PART_BYTES >> 20} MB)")

    return JaxtuneRecords


def prepare_dataset(
    input_path: Union[str, Path],
    output_dir: Union[str, Path],
    format: str = "doit",
    *,
    on_error: OnError = "raise",
    overwrite: bool = False,
    part_bytes: int = PART_BYTES,
) -> PrepareResult:
    """Validate the records at ``input_path`` (a file or a folder of data files) and write them as an ArrayRecord
    dataset in ``output_dir``; ``data.path: <output_dir>`` then trains on it.

    Raises DataError for an invalid record under ``on_error="raise"`` (nothing is kept then), and FileExistsError
    when ``output_dir`` already holds a prepared dataset and ``overwrite`` is False.
    """
    import tensorflow_datasets as tfds

    check_format(format)
    output_dir = Path(local_path(output_dir))  # ArrayRecord writes local files: a URL is an error naming it
    meta_path = output_dir / PREPARED_META
    if (meta_path.exists() or (output_dir / _BUILDER_NAME).exists()) and not overwrite:
        raise FileExistsError(f"{output_dir} already holds a prepared dataset (pass overwrite=True to replace it)")
    parts = plan_parts(input_path, part_bytes)
    if not parts:
        raise DataError(str(input_path), 0, "", "the input holds no data")
    if overwrite:
        if (output_dir / _BUILDER_NAME).exists():
            shutil.rmtree(output_dir / _BUILDER_NAME)
        meta_path.unlink(missing_ok=True)
    output_dir.mkdir(parents=True, exist_ok=True)

    collector = RecordCollector(format, on_error)
    abilities: Counter = Counter()
    tfds.disable_progress_bar()
    builder = _builder_class()(
        parts=parts, collector=collector, abilities=abilities, data_dir=str(output_dir), file_format="array_record"
    )
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
        "skipped": collector.report.to_dict(),
        "dataset_dir": str(Path(builder.data_dir).relative_to(output_dir)),
        "splits": [f"part{k}" for k in range(len(parts))],
    }
    meta_path.write_text(json.dumps(meta, ensure_ascii=False, indent=1), encoding="utf-8")
    return PrepareResult(output_dir, num, meta["abilities"], collector.report)


def is_prepared_dataset(path: Union[str, Path, None]) -> bool:
    """True when ``path`` is a folder written by :func:`prepare_dataset`."""
    return path is not None and (as_path(path) / PREPARED_META).is_file()


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
            self._source = builder.as_data_source(
                "+".join(self.meta["splits"]), deserialize_method=decode.DeserializeMethod.RAW_BYTES
            )
            if len(self._source) != self._len:
                raise ValueError(
                    f"{self.path}: {len(self._source)} stored records but {PREPARED_META} says {self._len}"
                )
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
        step = 1024
        for start in range(0, self._len, step):
            yield from self.__getitems__(range(start, min(self._len, start + step)))

    def __getstate__(self) -> dict:
        return {"path": self.path, "meta": self.meta, "_len": self._len, "_source": None}

    def __repr__(self) -> str:
        return f"PreparedRecords({self.path}, {self._len} records)"
