"""The Trash (SPEC §12): what deletions kept (`listing`), whether the registry still holds
what each kept manifest needs (`states`), and putting manifests back (`restore`), until
the garbage collector runs. Imports `hubimages.lib`, `hubimages.models`,
`hubimages.registries`, `hubimages.sync` and the `registry` library."""
