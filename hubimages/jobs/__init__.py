"""Jobs run by the task workers (SPEC §7): starting and retrying them (`queue`), running
them (`runner`), the `django.tasks` wrappers (`tasks`), each worker's own loop: heartbeat,
lining jobs up with their tasks, schedule, housekeeping (`worker`), and settling what a
stopped process left running (`recovery`). May import every feature above; nothing but the
web, the API and the commands imports it."""
