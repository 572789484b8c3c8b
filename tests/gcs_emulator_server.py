"""Runs gcp-storage-emulator in memory on 127.0.0.1 with one gap filled, for tests/gcs_emulator.py:

    python gcs_emulator_server.py PORT

The emulator's media download answers without the ``x-goog-generation`` header that GCS sends. tensorstore (Orbax's
array store) takes an object's generation from that header, so after re-reading an OCDBT manifest it conditions
the next write on an unknown generation and fails with "Malformed StorageGeneration" (now and then, whenever a
manifest is read back rather than served from tensorstore's cache). Here the download handler adds the header.
"""

from __future__ import annotations

import sys

from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects

_download = objects.download


def _download_with_generation(request, response, storage, *args, **kwargs):
    try:
        obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
        response["x-goog-generation"] = str(obj["generation"])
        response["x-goog-metageneration"] = str(obj["metageneration"])
    except NotFound:
        pass
    return _download(request, response, storage, *args, **kwargs)


objects.download = _download_with_generation  # before the server module builds its routing table

from gcp_storage_emulator.server import create_server  # noqa: E402


def main(port: int) -> None:
    server = create_server("127.0.0.1", port, in_memory=True)
    server.run()


if __name__ == "__main__":
    main(int(sys.argv[1]))
