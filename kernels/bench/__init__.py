"""The benchmark of record: ``python -m kernels.bench --out DIR`` (options in ``kernels/bench/__main__.py`` and
kernels/README.md). Modules by job: ``run`` (device and constants), ``timing``, ``cases``, ``decode``, ``prefill``,
``cache``, ``sdpa`` and ``flex`` (the baselines), ``report`` (targets and ``bench.md``), ``sliding_window``
(``python -m kernels.bench sliding-window --out DIR``: sliding-window decode and prefill) and ``loads`` (the bytes a
kernel loads, counted in the Triton interpreter)."""
