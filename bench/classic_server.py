#!/usr/bin/env python3
"""The classic "socket remote command" server, as the tutorial writes it.

Faithful on purpose, to be measured against rexec: one connection at a time,
the command is what one recv(1024) returns, the whole result is read into
memory, then the 4-byte length, the JSON header and the body leave in three
separate sends, without TCP_NODELAY (so Nagle's algorithm may hold the header
until the length is acknowledged). Only deviations: the port comes from argv;
stdout and stderr both go in the body (the tutorial sends only one of them);
stdout is read before stderr (the tutorial reads stderr first, which
deadlocks once stdout fills its pipe: a 1 GiB answer never comes); nothing
is printed per command.

Usage: classic_server.py PORT   (prints "listening PORT" when ready)
"""

import json
import socket
import struct
import subprocess
import sys


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8080
    phone = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    phone.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    phone.bind(('127.0.0.1', port))
    phone.listen(5)
    print('listening', phone.getsockname()[1], flush=True)
    while True:
        conn, _addr = phone.accept()
        while True:
            try:
                cmd = conn.recv(1024)
            except ConnectionResetError:
                break
            if not cmd:
                break
            res = subprocess.Popen(cmd.decode('utf-8'), shell=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            out = res.stdout.read()
            err = res.stderr.read()
            res.wait()
            back_msg = out + err
            headers = {'data_size': len(back_msg)}
            head_json_bytes = bytes(json.dumps(headers), encoding='utf-8')
            try:
                conn.send(struct.pack('i', len(head_json_bytes)))  # the header's length first
                conn.send(head_json_bytes)                          # then the header
                conn.sendall(back_msg)                              # then the body
            except (BrokenPipeError, ConnectionResetError):
                break
        conn.close()


if __name__ == '__main__':
    main()
