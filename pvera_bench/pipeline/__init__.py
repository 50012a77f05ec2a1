"""One run end to end, as the protocol reads: validate the config (with the registry), guard the results folder,
fit, select, test, and write the result record."""
