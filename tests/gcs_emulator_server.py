"""Runs gcp-storage-emulator in memory on 127.0.0.1 with two gaps filled and one cost removed, for
tests/gcs_emulator.py:

    python gcs_emulator_server.py PORT

The emulator ignores generation preconditions: multipart uploads (the run lease's) are made to honour
``ifGenerationMatch`` here.

The emulator's media download answers without the ``x-goog-generation`` header that GCS sends. tensorstore (Orbax's
array store) takes an object's generation from that header, so after re-reading an OCDBT manifest it conditions
the next write on an unknown generation and fails with "Malformed StorageGeneration" (now and then, whenever a
manifest is read back rather than served from tensorstore's cache). Here the download handler adds the header.
"""

from __future__ import annotations

import sys
from http import HTTPStatus

from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects
from gcp_storage_emulator.storage import Storage

_download = objects.download


def _download_with_generation(request, response, storage, *args, **kwargs):
    try:
        obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
        response["x-goog-generation"] = str(obj["generation"])
        response["x-goog-metageneration"] = str(obj["metageneration"])
    except NotFound:
        pass
    return _download(request, response, storage, *args, **kwargs)


_insert = objects.insert


def _insert_with_precondition(request, response, storage, *args, **kwargs):
    """A multipart upload honours ``ifGenerationMatch`` (0: the object must not exist), answering 412 as GCS does;
    the emulator ignores it. Only multipart uploads (google-cloud-storage's, the run lease's) are checked, so the
    other stacks' requests are served as before."""
    wanted = request.query.get("ifGenerationMatch")
    if wanted and request.query.get("uploadType") == ["multipart"]:
        name = request.query["name"][0] if "name" in request.query else request.data["meta"].get("name")
        try:
            current = str(storage.get_file_obj(request.params["bucket_name"], name)["generation"])
        except NotFound:
            current = "0"
        if current != wanted[0]:
            response.status = HTTPStatus.PRECONDITION_FAILED
            response.json({"error": {"code": 412, "message": "Precondition Failed"}})
            return None
    return _insert(request, response, storage, *args, **kwargs)


objects.download = _download_with_generation  # before the server module builds its routing table
objects.insert = _insert_with_precondition

from gcp_storage_emulator.server import create_server  # noqa: E402


def main(port: int) -> None:
    Storage._write_config_to_file = lambda self: None  # in memory: a file nothing reads (see above)
    server = create_server("127.0.0.1", port, in_memory=True)
    server.run()


if __name__ == "__main__":
    main(int(sys.argv[1]))
