"""Everything a run reports, computed from its ImageRun records.

- ``stats``: the one statistics helper (``Stats.from_values``).
- ``metrics``: metrics.json (``build_metrics``, ``write_metrics``).
- ``summary``: stakeholder_summary.md, report.md and the terminal summary.
- ``plots``: optional PNGs (matplotlib).
- ``gate``: the regression gate against a baseline run (per-page values, t intervals from
  ``ttest``); ``compatibility``: run identities and what makes a baseline comparable.
- ``compare``: ``python -m pytest_dsocr compare RUN_A RUN_B``.
- ``io``: atomic writes; ``markdown``: table helpers.
"""
