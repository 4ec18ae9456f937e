"""Few-shot learners behind one interface (``metafsl.algorithms.base.Algorithm``).

One module per method; each option file ``conf/algo/<name>.yaml`` names its class with
``_target_`` and every constructor argument with its default (``metafsl list algo`` prints
the files' header lines without importing torch).
"""
