"""``gensift demo``: the whole loop on a fresh machine (``run``), on example images drawn
at run time (``samples``, also used by tests and benchmarks)."""
