"""Jobs run by the task workers (SPEC §7): starting and retrying them (`queue`), running
them (`runner`), the `django.tasks` wrappers (`tasks`), and each worker's own loop:
heartbeat, recovery, schedule, housekeeping (`worker`). May import every feature above;
nothing but the web, the API and the commands imports it."""
