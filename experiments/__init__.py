"""The MoMo benchmark: tasks (data, model, loss, metric), the training loop, run records and figures."""
