import typing

_modules = typing.sys.modules


def route(request, replicas, now):
    return replicas[0].id
