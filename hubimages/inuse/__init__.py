"""In use: what clusters and CI systems report they run, so nothing deletes it (SPEC §13):
reading image references (`references`) and Kubernetes' JSON (`kubectl`, and the reporter
`python -m hubimages.inuse kubectl`, which needs no Django), storing a source's report
(`reports`) and matching items against the live reports (`matching`). Imports
`hubimages.lib`, `hubimages.models`, `hubimages.registries` and the `registry` library;
deletion, retention, the pages and the API import it, never the other way round."""
