"""The real hio client (hio 0.6.10) talking to hio-host.

usage: hio_client.py PORT COUNT
Sends COUNT messages with hio's Client, expects each echoed back whole,
prints "ok COUNT". Every wait is bounded.
"""
import sys

from hio.base import tyming
from hio.core.tcp import clienting

from hio_roundtrip import Deadline, connect, roundtrip

port, count = int(sys.argv[1]), int(sys.argv[2])
deadline = Deadline(20)

tymist = tyming.Tymist(tock=0.01)
with clienting.openClient(tymth=tymist.tymen(), host="127.0.0.1", port=port) as client:
    connect(client, deadline)
    for i in range(count):
        roundtrip(client, f"hio message {i} ".encode() * (1 + i % 7) + b"\n", deadline)
print("ok", count)
