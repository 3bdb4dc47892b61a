"""The report page: one self-contained HTML file per run, seed group and sweep (``page``)."""
