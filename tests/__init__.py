"""npud's test suite; tests mirror the package's layout."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
"""The repository root (for the files tests read: deploy manifests, dashboards, pyproject)."""
