"""Everything read back from the results folder: the runs as one table, the accuracy, statistics, calibration and
hyperparameter tables, their figures, and the HTML report."""
