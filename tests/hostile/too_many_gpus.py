from serving.contract import Plan, ReplicaSpec


def route(request, replicas, now):
    return replicas[0].id


def reschedule(cluster, now):
    return Plan(tuple(ReplicaSpec("H100") for _ in range(64)))
