#!/usr/bin/env python3
"""Upload a file or a directory tree to rexecd from Python, through the
rexec.v1.Files API and stubs generated from proto/ (no tar, no rexec CLI).

    rexec_upload.py ADDR LOCAL_PATH REMOTE_PATH

As `rexec cp -r LOCAL_PATH :REMOTE_PATH`: an existing remote directory (or a
REMOTE_PATH ending in `/`) receives LOCAL_PATH under its own name; otherwise
LOCAL_PATH is created as REMOTE_PATH. Symlinks are sent as links. Prints the
server's answer (entries, bytes, path); exit 0, or 1 with the status on
stderr when the upload is refused.

Credentials and stubs as rexec_client.py: $REXEC_TOKEN or the local token
for a loopback ADDR; stubs in $REXEC_PY_STUBS, else gen/ next to this file.
"""

import hashlib
import os
import stat
import sys

sys.path.insert(
    0, os.environ.get("REXEC_PY_STUBS") or os.path.join(os.path.dirname(__file__), "gen")
)

import grpc  # noqa: E402
from rexec.v1 import files_pb2, files_pb2_grpc  # noqa: E402
from rexec_client import token_for  # noqa: E402

CHUNK = 512 * 1024


def entry_of(path, rel):
    """The FileEntry for `path`, named `rel` in the transfer (not followed)."""
    info = os.lstat(path)
    entry = files_pb2.FileEntry(
        path=rel, mode=stat.S_IMODE(info.st_mode), mtime_ns=info.st_mtime_ns
    )
    if stat.S_ISLNK(info.st_mode):
        entry.type = files_pb2.FILE_TYPE_SYMLINK
        entry.link_target = os.readlink(path)
    elif stat.S_ISDIR(info.st_mode):
        entry.type = files_pb2.FILE_TYPE_DIRECTORY
    else:
        entry.type = files_pb2.FILE_TYPE_FILE
        entry.size = info.st_size
    return entry


def file_messages(path, rel):
    """A file's entry, its data chunks, and its end with the SHA-256."""
    entry = entry_of(path, rel)
    yield files_pb2.UploadRequest(entry=entry)
    if entry.type != files_pb2.FILE_TYPE_FILE:
        return
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            yield files_pb2.UploadRequest(data=chunk)
    yield files_pb2.UploadRequest(end=files_pb2.FileEnd(sha256=digest.digest()))


def upload_messages(local, remote):
    """`start`, every entry in walk order (a directory before its contents), `commit`."""
    yield files_pb2.UploadRequest(start=files_pb2.UploadStart(destination=remote))
    top = os.path.basename(os.path.normpath(local))
    yield from file_messages(local, top)
    if os.path.isdir(local) and not os.path.islink(local):
        for dirpath, dirnames, filenames in os.walk(local):
            dirnames.sort()
            base = os.path.join(top, os.path.relpath(dirpath, local))
            for name in dirnames + sorted(filenames):
                rel = os.path.normpath(os.path.join(base, name))
                yield from file_messages(os.path.join(dirpath, name), rel)
    # Without it rexecd keeps nothing: a closed stream alone is not "done".
    yield files_pb2.UploadRequest(commit=files_pb2.UploadCommit())


def main(argv):
    if len(argv) != 4:
        print(__doc__.strip().splitlines()[3].strip(), file=sys.stderr)
        return 2
    addr, local, remote = argv[1:]
    token = token_for(addr)
    metadata = [("authorization", f"Bearer {token}")] if token else []
    with grpc.insecure_channel(addr) as channel:
        stub = files_pb2_grpc.FilesStub(channel)
        try:
            result = stub.Upload(upload_messages(local, remote), metadata=metadata)
        except grpc.RpcError as e:
            print(f"rexec_upload: {e.code().name}: {e.details()}", file=sys.stderr)
            return 1
    print(f"{result.entries} entries, {result.bytes} bytes to {result.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
