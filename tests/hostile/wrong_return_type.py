def route(request, replicas, now):
    return "replica-0"
