"""On the device: drift-free timing against the full model (``timing``), and the closed loop that measures
path points until one is under the budget (``closed_loop``)."""
