#!/usr/bin/env python3
"""Timing helpers for bench/compare.sh. Every subcommand prints one JSON value.

  times RUNS -- CMD...            wall seconds of RUNS sequential runs (posix_spawn,
                                  stdin and stdout on /dev/null)
  rate PARALLEL SECONDS -- CMD... runs/s with PARALLEL loops running CMD
  classic HOST:PORT RUNS CMD      seconds per answer from a 4-byte-prefix server,
                                  RUNS requests on one connection (unframed, as the
                                  classic client sends them); the body is discarded
  relay HOST:PORT RUNS CMD        seconds per run from bench/relay.py (new connection each)
  rss PID                         resident memory of PID, in bytes
  free-port                       a free TCP port on 127.0.0.1
  table RESULTS                   the comparison table from compare.sh's results file
"""

import json
import os
import socket
import statistics
import struct
import sys
import threading
import time

CHUNK = 1 << 20


def spawn_wait(argv):
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, '/dev/null', os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, '/dev/null', os.O_WRONLY, 0),
    ]
    pid = os.posix_spawnp(argv[0], argv, os.environ, file_actions=actions)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        sys.exit(f'measure: {argv} exited {code}')


def times(runs, argv):
    result = []
    for _ in range(runs):
        start = time.perf_counter()
        spawn_wait(argv)
        result.append(time.perf_counter() - start)
    return result


def rate(parallel, seconds, argv):
    counts = [0] * parallel
    deadline = time.perf_counter() + seconds

    def loop(index):
        while time.perf_counter() < deadline:
            spawn_wait(argv)
            counts[index] += 1

    start = time.perf_counter()
    threads = [threading.Thread(target=loop, args=(i,)) for i in range(parallel)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts) / (time.perf_counter() - start)


def recv_exactly(sock, n):
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError('server closed the connection')
        data += chunk
    return bytes(data)


def classic(addr, runs, command):
    host, port = addr.rsplit(':', 1)
    sock = socket.create_connection((host, int(port)))
    buffer = bytearray(CHUNK)
    result = []
    for _ in range(runs):
        start = time.perf_counter()
        sock.send(command.encode('utf-8'))
        header_len = struct.unpack('<i', recv_exactly(sock, 4))[0]
        header = json.loads(recv_exactly(sock, header_len))
        remaining = header['data_size']
        while remaining > 0:
            n = sock.recv_into(buffer, min(CHUNK, remaining))
            if n == 0:
                raise ConnectionError('server closed the connection')
            remaining -= n
        result.append(time.perf_counter() - start)
    sock.close()
    return result


def relay(addr, runs, command):
    host, port = addr.rsplit(':', 1)
    buffer = bytearray(CHUNK)
    result = []
    for _ in range(runs):
        start = time.perf_counter()
        sock = socket.create_connection((host, int(port)))
        sock.sendall(command.encode('utf-8') + b'\n')
        while sock.recv_into(buffer) > 0:
            pass
        sock.close()
        result.append(time.perf_counter() - start)
    return result


def rss(pid):
    with open(f'/proc/{pid}/status') as status:
        for line in status:
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) * 1024
    sys.exit(f'measure: no VmRSS for {pid}')


def free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


# Figures, in table order: (key, title, unit, higher_is_better).
FIGURES = [
    ('stream', '(a) 1 GiB stream to /dev/null', 'MB/s', True),
    ('warm', '(b) warm `true`, p50', 'ms', False),
    ('oneshot', '(c) one-shot CLI `true`', 'ms', False),
    ('rate', '(d) execs/s at c=64', 'execs/s', True),
    ('rss', '(e) server RSS, 1,000 sessions of `sleep 60`', 'MiB', False),
    ('copy-up', '(f) 1 GiB file copied to the server', 'MB/s', True),
    ('copy-down', '(f) 1 GiB file copied from the server', 'MB/s', True),
]


def table(path):
    rows = {}
    order = []
    with open(path) as results:
        for line in results:
            record = json.loads(line)
            key = (record['figure'], record['system'])
            if key not in rows:
                order.append(key)
                rows[key] = []
            rows[key].extend(record['values'])
    medians = {key: statistics.median(values) for key, values in rows.items()}
    out = []
    for figure, title, unit, higher in FIGURES:
        systems = [s for (f, s) in order if f == figure]
        if not systems:
            continue
        ssh = medians.get((figure, 'ssh'))
        relay_value = medians.get((figure, 'relay'))
        floor = next((medians[(figure, s)] for s in systems if s.startswith('local')), None)

        def ratio(value, reference):
            if reference is None or reference == 0 or value == 0:
                return '—'
            return f'{value / reference:.2f}×'

        out.append(f'\n{title} [{unit}, median; ratio = this / reference]')
        out.append(f'  {"system":<34} {"median":>12} {"runs":>5} {"÷ ssh":>8} {"÷ relay":>8} {"÷ local":>8}')
        for system in systems:
            value = medians[(figure, system)]
            shown = f'{value:.3f}' if value < 10 else f'{value:.1f}'
            out.append(f'  {system:<34} {shown:>12} {len(rows[(figure, system)]):>5} '
                       f'{ratio(value, ssh):>8} {ratio(value, relay_value):>8} {ratio(value, floor):>8}')
    print('\n'.join(out).lstrip('\n'))


def main():
    args = sys.argv[1:]
    if not args:
        sys.exit(__doc__)
    command, rest = args[0], args[1:]
    if '--' in rest:
        split = rest.index('--')
        rest, argv = rest[:split], rest[split + 1:]
    else:
        argv = []
    if command == 'times':
        value = times(int(rest[0]), argv)
    elif command == 'rate':
        value = rate(int(rest[0]), float(rest[1]), argv)
    elif command == 'classic':
        value = classic(rest[0], int(rest[1]), rest[2])
    elif command == 'relay':
        value = relay(rest[0], int(rest[1]), rest[2])
    elif command == 'rss':
        value = rss(int(rest[0]))
    elif command == 'free-port':
        value = free_port()
    elif command == 'table':
        table(rest[0])
        return
    else:
        sys.exit(__doc__)
    print(json.dumps(value))


if __name__ == '__main__':
    main()
