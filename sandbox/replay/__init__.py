"""The replay stage: a candidate confirmed on engines, through the live router.

``stage``    the stage itself: a scenario slice replayed open-loop through the router
             running the candidate, scored like the simulator and compared with it;
``engines``  the engines a slice runs on, by target kind (simulated, URLs, vLLM containers);
``worker``   the stage in a worker process of its own (``python -m sandbox.replay.worker``),
             what callers outside the evaluation plane use;
``shots``    a workload as load-generator shots (also what ``autopoiesis replay`` sends).

The HTTP load generator itself is ``serving.loadgen``: the router benchmark in the data
plane uses it too, and the data plane imports nothing from here.
"""
