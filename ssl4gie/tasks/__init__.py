"""One module per task. A task owns its model assembly, datasets, loss, metrics and drawing; the engine only
calls the methods of :class:`ssl4gie.tasks.base.Task`."""
