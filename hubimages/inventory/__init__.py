"""Selectors: what the pages, the API and the commands read about repositories and their
items (lists, counts, search, status, details). Reads only; imports `hubimages.lib`,
`hubimages.models`, `hubimages.sync.rollups`, `hubimages.inuse` (what runs) and the
`registry` library."""
