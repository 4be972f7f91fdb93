"""Keeping the database true to the registry: the database half of a sync (`service`,
`store`), registry notifications (`events`, `activity`), and the derived columns the
lists read (`rollups`). Imports `hubimages.lib`, `hubimages.models`, `hubimages.registries`
and the `registry` library; never deletion, retention, storage, jobs or the web."""
