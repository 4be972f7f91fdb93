"""The registries hubimages serves and how to reach them (a configured `RegistryClient`).
Imports `hubimages.lib`, `hubimages.models` and the `registry` library."""
