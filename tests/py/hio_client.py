"""The real hio client (hio 0.6.10) talking to hio-host.

usage: hio_client.py PORT COUNT
Sends COUNT messages with hio's Client, expects each echoed back whole,
prints "ok COUNT". Every wait is bounded.
"""
import sys
import time

from hio.base import tyming
from hio.core.tcp import clienting

port, count = int(sys.argv[1]), int(sys.argv[2])
deadline = time.monotonic() + 20


def wait(what):
    if time.monotonic() > deadline:
        sys.exit(f"timed out waiting for {what}")
    time.sleep(0.0005)


tymist = tyming.Tymist(tock=0.01)
with clienting.openClient(tymth=tymist.tymen(), host="127.0.0.1", port=port) as client:
    while not client.connected:
        client.serviceConnect()
        wait("connect")
    for i in range(count):
        msg = f"hio message {i} ".encode() * (1 + i % 7) + b"\n"
        client.tx(msg)
        while client.txbs:
            client.serviceSends()
            wait("send")
        while len(client.rxbs) < len(msg):
            client.serviceReceives()
            if client.cutoff:
                sys.exit("server cut the connection off")
            wait("echo")
        if bytes(client.rxbs) != msg:
            sys.exit(f"echo mismatch: sent {msg!r}, got {bytes(client.rxbs)!r}")
        client.clearRxbs()
print("ok", count)
