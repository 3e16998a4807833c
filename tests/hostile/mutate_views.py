def route(request, replicas, now):
    replicas[0].running = 0
    return replicas[0].id
