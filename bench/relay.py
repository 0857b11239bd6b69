#!/usr/bin/env python3
"""The ceiling for child -> server -> client: a raw TCP relay with no framing.

A client connects and sends one command line ending in "\n"; the relay runs
it with /bin/sh -c and copies its stdout to the socket with 1 MiB reads and
1 MiB pipe buffers (F_SETPIPE_SZ) until EOF, then closes. No header, no exit
status, no stderr: only the copy that any remote runner must do.

Usage: relay.py PORT   (prints "listening PORT" when ready)
"""

import fcntl
import os
import socket
import subprocess
import sys
import threading

BUFFER = 1 << 20


def serve(conn):
    with conn:
        line = b''
        while not line.endswith(b'\n'):
            chunk = conn.recv(4096)
            if not chunk:
                return
            line += chunk
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        child = subprocess.Popen(['/bin/sh', '-c', line.decode('utf-8').rstrip('\n')],
                                 stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
        fd = child.stdout.fileno()
        try:
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, BUFFER)
        except OSError:
            pass
        buffer = bytearray(BUFFER)
        view = memoryview(buffer)
        try:
            while True:
                n = os.readv(fd, [buffer])
                if n == 0:
                    break
                conn.sendall(view[:n])
        except (BrokenPipeError, ConnectionResetError):
            child.kill()
        child.stdout.close()
        child.wait()


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(('127.0.0.1', port))
    listener.listen(64)
    print('listening', listener.getsockname()[1], flush=True)
    while True:
        conn, _addr = listener.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


if __name__ == '__main__':
    main()
