"""`speechmerge search`: merge coefficients and hyper-parameters searched on validation speech."""
