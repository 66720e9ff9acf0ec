"""TLS peers from Python: the standard library's ssl, and hio's own ClientTls.

usage: tls_client.py ssl|hio PORT CA CERT KEY
Echoes a few messages through hio-host and prints "ok". Every wait is bounded.
"""
import socket
import ssl
import sys

from hio_roundtrip import Deadline, connect, roundtrip

mode, port, ca, cert, key = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
deadline = Deadline(20)

if mode == "ssl":
    ctx = ssl.create_default_context(cafile=ca)
    ctx.load_cert_chain(cert, key)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            for i in range(10):
                msg = f"python ssl {i} {s.version()}\n".encode()
                s.sendall(msg)
                got = b""
                while len(got) < len(msg):
                    chunk = s.recv(len(msg) - len(got))
                    if not chunk:
                        sys.exit("closed early")
                    got += chunk
                if got != msg:
                    sys.exit(f"mismatch {got!r}")
    print("ok")
else:
    from hio.base import tyming
    from hio.core.tcp import clienting

    tymist = tyming.Tymist(tock=0.01)
    client = clienting.ClientTls(tymth=tymist.tymen(), host="localhost", port=port,
                                 certedhost="localhost", keypath=key, certpath=cert, cafilepath=ca)
    try:
        connect(client, deadline)
        for i in range(10):
            roundtrip(client, f"hio ClientTls {i}\n".encode(), deadline)
    finally:
        client.close()
    print("ok")
