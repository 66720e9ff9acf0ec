"""What the Python clients share: bounded waits and one echo exchange
through a hio client (plain `Client` or `ClientTls`)."""
import sys
import time


class Deadline:
    """Every wait of a script ends by `seconds` from its start."""

    def __init__(self, seconds):
        self.at = time.monotonic() + seconds

    def wait(self, what):
        if time.monotonic() > self.at:
            sys.exit(f"timed out waiting for {what}")
        time.sleep(0.0005)


def connect(client, deadline):
    while not client.connected:
        client.serviceConnect()
        deadline.wait("connect")


def roundtrip(client, msg, deadline):
    """Send msg with hio's tx/serviceSends, expect it echoed back whole."""
    client.tx(msg)
    while client.txbs:
        client.serviceSends()
        deadline.wait("send")
    while len(client.rxbs) < len(msg):
        client.serviceReceives()
        if client.cutoff:
            sys.exit("server cut the connection off")
        deadline.wait("echo")
    if bytes(client.rxbs) != msg:
        sys.exit(f"echo mismatch: sent {msg!r}, got {bytes(client.rxbs)!r}")
    client.clearRxbs()
