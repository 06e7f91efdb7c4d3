"""The benchmark stages (a package, so their module names never clash with test files elsewhere)."""
