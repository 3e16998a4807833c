def route(request, replicas, now):
    raise ValueError("boom from the candidate")
