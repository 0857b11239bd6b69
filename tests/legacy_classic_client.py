#!/usr/bin/env python3
"""The classic socket client of the 4-byte-prefix exercise, written the way old
scripts are: send the raw command text, read the 4-byte length with struct, the
JSON header, then data_size bytes; then the next command on the same socket.
tests/legacy.rs runs it against rexecd's legacy listener.

Usage: legacy_classic_client.py HOST:PORT COMMAND...
Prints one JSON line per answer: {"header": {...}, "body": "<body as latin-1>"}.
"""
import json
import socket
import struct
import sys


def main():
    host, port = sys.argv[1].rsplit(':', 1)
    client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    client.connect((host, int(port)))
    for cmd in sys.argv[2:]:
        client.send(bytes(cmd, encoding='utf-8'))
        head = client.recv(4)
        head_json_len = struct.unpack('i', head)[0]
        head_json = json.loads(client.recv(head_json_len).decode('utf-8'))
        data_len = head_json['data_size']
        recv_data = bytearray()
        while len(recv_data) < data_len:
            chunk = client.recv(1024)
            if not chunk:
                sys.exit('connection closed after %d of %d bytes' % (len(recv_data), data_len))
            recv_data += chunk
        print(json.dumps({'header': head_json, 'body': recv_data.decode('latin-1')}), flush=True)
    client.close()


if __name__ == '__main__':
    main()
