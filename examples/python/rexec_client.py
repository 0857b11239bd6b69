#!/usr/bin/env python3
"""Run a command on rexecd from Python, through stubs generated from proto/.

    rexec_client.py ADDR COMMAND...            # Exec: COMMAND run by the remote shell
    rexec_client.py --session ADDR COMMAND...  # Session: local stdin streamed to it

Remote stdout and stderr go to local stdout and stderr as they arrive. The exit
code is the remote one; 128+N when the remote process died of signal N; 255
when the call itself failed (one line on stderr), as with ssh.

Credentials: $REXEC_TOKEN when set (for `rexecd --tokens-file`); else, for a
loopback ADDR, this user's local token, which a default rexecd requires: the
file $REXEC_LOCAL_TOKEN_FILE, else ~/.local/state/rexec/token (as `rexec` does).

Stubs come from grpcio-tools (see README, "Python"); they are looked up in
$REXEC_PY_STUBS, else in gen/ next to this file.
"""

import os
import signal
import sys

sys.path.insert(
    0, os.environ.get("REXEC_PY_STUBS") or os.path.join(os.path.dirname(__file__), "gen")
)

import grpc  # noqa: E402
from rexec.v1 import rexec_pb2, rexec_pb2_grpc  # noqa: E402

STDIN_CHUNK = 64 * 1024


def is_loopback(addr):
    host = addr.rsplit(":", 1)[0].strip("[]") if ":" in addr else addr
    return host in ("localhost", "::1") or host.startswith("127.")


def token_for(addr):
    """$REXEC_TOKEN, else the local token for a loopback address, else None."""
    if os.environ.get("REXEC_TOKEN"):
        return os.environ["REXEC_TOKEN"].strip()
    if not is_loopback(addr):
        return None  # never send the local token to another host
    path = os.environ.get("REXEC_LOCAL_TOKEN_FILE") or os.path.expanduser(
        "~/.local/state/rexec/token"
    )
    try:
        with open(path) as f:
            return f.read().strip() or None
    except OSError:
        return None


def exec_command(stub, command, metadata=()):
    """Exec: one request, then the event stream."""
    return stub.Exec(rexec_pb2.ExecRequest(command=command), metadata=metadata)


def session_requests(command, stdin_fd):
    """Session: `start`, then stdin chunks as they are read, then `stdin_eof`.

    grpc pulls this generator on its own thread, so blocking reads are fine.
    """
    yield rexec_pb2.SessionRequest(start=rexec_pb2.ExecRequest(command=command))
    while True:
        chunk = os.read(stdin_fd, STDIN_CHUNK)
        if not chunk:
            break
        yield rexec_pb2.SessionRequest(stdin=chunk)
    yield rexec_pb2.SessionRequest(stdin_eof=True)


def run_session(stub, command, stdin_fd=0, metadata=()):
    return stub.Session(session_requests(command, stdin_fd), metadata=metadata)


def exit_code(exit_event):
    """The local exit code for a remote `exit` event, as ssh computes it."""
    if exit_event.WhichOneof("status") == "signal":
        try:
            return 128 + signal.Signals["SIG" + exit_event.signal].value
        except KeyError:
            return 255
    return exit_event.code


def stream_events(events):
    """Writes output chunks as they arrive; returns the exit code."""
    stdout, stderr = sys.stdout.buffer, sys.stderr.buffer
    for event in events:
        kind = event.WhichOneof("event")
        if kind == "stdout":
            stdout.write(event.stdout)
            stdout.flush()
        elif kind == "stderr":
            stderr.write(event.stderr)
            stderr.flush()
        elif kind == "exit":
            return exit_code(event.exit)
    raise RuntimeError("stream ended without an exit event")


def main(argv):
    args = argv[1:]
    session = bool(args) and args[0] == "--session"
    if session:
        args = args[1:]
    if len(args) < 2:
        print(__doc__.strip().splitlines()[0], file=sys.stderr)
        print("usage: rexec_client.py [--session] ADDR COMMAND...", file=sys.stderr)
        return 2
    addr, command = args[0], " ".join(args[1:])
    token = token_for(addr)
    metadata = [("authorization", f"Bearer {token}")] if token else []
    with grpc.insecure_channel(addr) as channel:
        stub = rexec_pb2_grpc.RemoteExecStub(channel)
        try:
            if session:
                events = run_session(stub, command, metadata=metadata)
            else:
                events = exec_command(stub, command, metadata=metadata)
            return stream_events(events)
        except grpc.RpcError as e:
            print(f"rexec_client: {e.code().name}: {e.details()}", file=sys.stderr)
            return 255
        except RuntimeError as e:
            print(f"rexec_client: {e}", file=sys.stderr)
            return 255


if __name__ == "__main__":
    sys.exit(main(sys.argv))
