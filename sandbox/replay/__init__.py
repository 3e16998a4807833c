"""The replay stage: a candidate confirmed on engines, through the live router.

``stage``    the stage itself: a scenario slice replayed open-loop through the router
             running the candidate, scored like the simulator and compared with it;
``engines``  the engines a slice runs on, by target kind (simulated, URLs, vLLM containers);
``worker``   the stage in a worker process of its own (``python -m sandbox.replay.worker``),
             what callers outside the evaluation plane use;
``shots``    a workload as load-generator shots (also what ``autopoiesis replay`` sends);
``loadgen``  the open-loop HTTP load generator that sends them (the demo and the router
             benchmark send their traffic with it too).
"""
