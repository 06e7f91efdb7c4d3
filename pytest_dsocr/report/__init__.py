"""Everything a run reports, computed from its ImageRun records.

- ``stats``: the one statistics helper (``Stats.from_values``).
- ``metrics``: metrics.json (``build_metrics``, ``write_metrics``).
- ``summary``: stakeholder_summary.md, report.md and the terminal summary.
- ``plots``: optional PNGs (matplotlib).
- ``gate``: the noise-aware regression gate against a baseline run; ``ranktests`` its tests.
- ``compare``: ``python -m pytest_dsocr compare RUN_A RUN_B``.
- ``io``: atomic writes; ``markdown``: table helpers.
"""
