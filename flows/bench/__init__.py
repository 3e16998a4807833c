"""Every benchmark behind ``autopoiesis bench …``, in one home (commands in ``flows/cli/bench.py``).

Each measures side by side in one run and reports ratios, never a figure timed alone:

- ``baselines.py``   every baseline policy on every scenario (the table in the README), and the
                     simulator's own speed (``bench simulator``);
- ``route.py``       what one ``route()`` call costs per policy, against the pre-kit loop;
- ``fidelity.py``    the step-time model's held-out error against the measured profiles;
- ``router.py``      the live router against vLLM's Rust router and plain HTTP proxies;
- ``fanout.py``      the evaluation fan-out, threads against Dask, on one batch;
- ``evolution.py``   evolution judged on held-out stretches against every scenario's best baseline.

They live in the control plane because they drive the other two: a benchmark may import
``sandbox`` and ``serving``; nothing there imports a benchmark.
"""
