"""Preview and delete (SPEC §4): the plan (`planning`), its execution (`execution`), what
the preview explains beside it (`preview`) and the deletion history (`history`). Imports
`hubimages.lib`, `hubimages.models`, `hubimages.inventory`, `hubimages.sync`,
`hubimages.inuse` (nothing in use is deleted without an override) and the `registry`
library."""
