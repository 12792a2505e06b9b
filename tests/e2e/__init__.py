"""End-to-end tests (a package, so that a module may share its basename with an
integration test: tests/e2e/test_file_source.py and tests/integration/test_file_source.py)."""
