"""Pure folds: (state, event) -> (store ops, outputs). No I/O, no clock."""
