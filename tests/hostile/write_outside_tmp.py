_targets = ["@@TARGET@@", "/app/sandbox/pwned.py", "/etc/pwned", "/usr/lib/pwned", "/pwned"]
_written = []
for _t in _targets:
    try:
        with open(_t, "w") as _f:
            _f.write("pwned")
        _written.append(_t)
    except OSError:
        pass
raise RuntimeError(f"wrote: {_written}")


def route(request, replicas, now):
    return replicas[0].id
