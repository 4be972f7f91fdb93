"""The registries hubimages serves (SPEC §11): their configuration (`config`, from
REGISTRIES_FILE or REGISTRY_URL, secrets from the environment or files), their rows
(`rows`), a client for each (`client`) and the cheap requests that find what each can do
(`probes`). Imports `hubimages.lib`, `hubimages.models` and the `registry` library."""
