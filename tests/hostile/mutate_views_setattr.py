def route(request, replicas, now):
    object.__setattr__(replicas[0], "running", 0)
    return replicas[0].id
