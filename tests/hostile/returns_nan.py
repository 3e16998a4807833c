def route(request, replicas, now):
    return float("nan")
