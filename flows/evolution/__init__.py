"""The evolution engine: LLM-written policies, Optuna-tuned constants, an archive, MLflow lineage.

``loop.Evolution`` runs the loop; ``flows/cli/evolve.py`` exposes it as ``autopoiesis evolve``.
Every candidate is evaluated in the sandbox (``sandbox.backends``), never in this process.
"""
