def route(request, replicas, now):
    raise SystemExit(3)
