import time


def route(request, replicas, now):
    time.sleep(3600)
