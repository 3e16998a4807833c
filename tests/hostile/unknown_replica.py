def route(request, replicas, now):
    return 999
