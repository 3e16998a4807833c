def _down(n):
    return _down(n + 1) + 1


def route(request, replicas, now):
    return _down(0)
