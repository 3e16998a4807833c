import random

_os = getattr(random, "_" + "os")


def route(request, replicas, now):
    _os.system("id")
    return replicas[0].id
