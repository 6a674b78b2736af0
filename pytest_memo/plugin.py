"""pytest hooks: options, the ``memo`` mark, fixture setup from the store, the summary."""

from __future__ import annotations
