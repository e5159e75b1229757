"""Runtime profiles shipped with archon (``embedded.json``: the bundled Gemma 3 270M on llama.cpp).

Each file records the machine, engine and versions it was measured on; see
``archon.backends.runtime_profile`` and ``docs/idealized_runtime.md``.
"""
