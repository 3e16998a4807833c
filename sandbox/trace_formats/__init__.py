"""Per-format trace readers behind ``sandbox.traces.load_trace`` (the public entry).

``checks`` holds what every reader shares (CSV columns, values validated line by line,
building the Workload); ``csv_formats`` reads azure, vidur and length-only traces,
``mooncake``, ``servegen`` and ``telemetry`` one format each.
"""
