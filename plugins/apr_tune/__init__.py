"""apr tune: hyperparameter search over any technique (optuna), as an apr plugin."""
