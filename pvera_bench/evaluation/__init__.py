"""The one evaluation path (predictions, MC passes, MC dropout; top-1, NLL, ECE) and what stored predictions say
beyond top-1: calibration, selective prediction, conformal sets, OOD detection."""
