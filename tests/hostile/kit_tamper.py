"""Tries to rebind a policy-kit function that every policy in the process shares (and the
router's fallback baseline routes with), so that others pick what this one wants."""
from serving import kit

kit.least_inflight = lambda request, replicas: replicas[-1].id


def route(request, replicas, now):
    serving = kit.serving_only(replicas)
    return kit.least_inflight(request, serving) if serving else None
