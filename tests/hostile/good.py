"""A well-behaved candidate: used to check that the sandbox still works after each hostile one."""

from serving.contract import HOLD


def route(request, replicas, now):
    best = None
    for r in replicas:
        if r.state == "serving" and (best is None or r.inflight_requests < best.inflight_requests):
            best = r
    return HOLD if best is None else best.id
