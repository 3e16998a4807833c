_os = __import__("os")
_os.system("touch /tmp/pwned")


def route(request, replicas, now):
    return replicas[0].id
