_line = "x" * 65536


def route(request, replicas, now):
    while True:
        print(_line)
