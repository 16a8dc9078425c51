#!/usr/bin/env python3
"""Measures a Mesos-DNS listener (`sandtrail scheduler --dns-listen`): answer time of
one query at a time (p50/p99 over UDP) and queries per second with WINDOW queries in
flight. Standard library only; the client is one Python thread, so the queries/s
figure is a floor set by the client as much as by the server.

    scripts/bench-dns.py HOST:PORT [NAME] [QUERIES] [WINDOW]

NAME defaults to _fib._tcp.marathon.mesos. (an SRV query).
"""
import random
import socket
import struct
import sys
import time


def query(qid, name, qtype=33):
    header = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    labels = b"".join(bytes([len(l)]) + l.encode() for l in name.rstrip(".").split("."))
    return header + labels + b"\x00" + struct.pack(">HH", qtype, 1)


def main():
    host, port = sys.argv[1].rsplit(":", 1)
    name = sys.argv[2] if len(sys.argv) > 2 else "_fib._tcp.marathon.mesos."
    total = int(sys.argv[3]) if len(sys.argv) > 3 else 20000
    window = int(sys.argv[4]) if len(sys.argv) > 4 else 32
    addr = (host, int(port))
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)

    # Answer time: one query at a time.
    times = []
    for i in range(2000):
        qid = random.randrange(65536)
        t = time.perf_counter()
        s.sendto(query(qid, name), addr)
        data, _ = s.recvfrom(4096)
        times.append(time.perf_counter() - t)
        assert struct.unpack(">H", data[:2])[0] == qid
        answers = struct.unpack(">H", data[6:8])[0]
    times.sort()
    p = lambda q: times[int(q * (len(times) - 1))] * 1e6
    print(f"answer time over {len(times)} queries: p50 {p(0.5):.0f} us, p99 {p(0.99):.0f} us ({answers} answers each)")

    # Throughput: WINDOW in flight.
    sent = received = 0
    start = time.perf_counter()
    while received < total:
        while sent - received < window and sent < total:
            s.sendto(query(sent & 0xFFFF, name), addr)
            sent += 1
        try:
            s.recvfrom(4096)
            received += 1
        except socket.timeout:
            print("timeout: answers lost", file=sys.stderr)
            break
    took = time.perf_counter() - start
    print(f"{received} queries in {took:.2f} s: {received / took:.0f} queries/s (window {window})")


if __name__ == "__main__":
    main()
