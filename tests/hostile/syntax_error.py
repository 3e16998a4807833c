def route(request, replicas, now)
    return replicas[0].id
