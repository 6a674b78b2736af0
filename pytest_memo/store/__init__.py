"""The memo store: entries on local disk (``local``) or behind an fsspec URL (``remote``)."""
