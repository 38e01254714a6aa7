"""MLflow: where the store is and how params are logged (``mlflow_setup``), and the one run per
training stage (``runs``)."""
