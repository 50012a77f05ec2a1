"""The one trainer: a task's inputs on the device, AdamW and the schedule, the epoch loop with early stopping and
resume, the grid search on val, the checkpointed run state, and the experiment loggers."""
