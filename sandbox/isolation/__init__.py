"""Isolation backends: where an untrusted candidate policy actually runs.

Every backend runs ``python -m sandbox.harness`` (see ``sandbox/harness.py``)
in an isolated place, sends it one request line and reads one response line:

``DockerBackend`` (``"docker"``)
    A container per evaluation, through the ``docker`` SDK: no network
    (``network_mode=none``), read-only root, a small ``noexec`` tmpfs at /tmp,
    memory/CPU/pids limits, user ``nobody``, all capabilities dropped,
    ``no-new-privileges``, an environment built here (nothing from the host),
    killed at the deadline and removed afterwards. Containers are used once;
    a small pool of pre-started ones (harness already imported, waiting on
    stdin) keeps the start cost off the evaluation's critical path.

``ProcessBackend`` (``"process"``)
    A bubblewrap sandbox per evaluation: every namespace unshared (network
    included), only the Python runtime and the project's code bound read-only,
    a private tmpfs /tmp, ``--die-with-parent``, a new session; rlimits (address
    space, CPU, file size, open files) and, where the machine allows it, a
    cgroup with memory and pids limits; the host environment scrubbed; the
    whole process group (and cgroup) killed at the deadline.

``"unsafe-process"``
    The same harness in a plain child process with rlimits and a scrubbed
    environment but *no* namespaces. Only when asked for by name; it warns
    on every evaluation. Nothing ever falls back to it silently.

Both mount the shared data (``shared/``) read-only at /shared, and a request's
``windows_dir`` (the pulled windows' content-addressed files, for ``window:``
scenarios) read-only at /windows (bubblewrap ``--ro-bind``, a Docker ``ro``
bind); pre-started sandboxes are pooled by (limits, windows folder).

``choose_backend("auto")`` takes Docker when a daemon answers and the image
exists, else bubblewrap, and says loudly which isolation is in force.

Layout: ``environment`` (what every sandbox is built from: code, environment,
shared data; ``SandboxUnavailable``), ``outcome`` (what came back and what it
means), ``pipes`` (capped output readers), ``cgroup``, ``base`` (the pooled
``Backend`` flow), ``process`` and ``docker`` (the two backends), ``choose``
(picking one). ``sandbox.backends`` re-exports the public names.
"""
