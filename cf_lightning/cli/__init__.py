"""The command-line entry points, one module each, so the library's algorithms never live beside them.

``fit`` (``cf-fit``: every training stage through LightningCLI), ``data`` (``cf-data``: shards, prompts,
trajectories), ``ablate`` (``cf-ablate``), ``export`` (``cf-export``), ``generate`` (``cf-gen``) and
``evaluate`` (``cf-eval``).
"""
