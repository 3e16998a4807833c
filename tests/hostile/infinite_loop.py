def route(request, replicas, now):
    while True:
        pass
