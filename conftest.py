"""Repo-level test plumbing: pytester for the plugin's own tests."""

pytest_plugins = ["pytester"]
