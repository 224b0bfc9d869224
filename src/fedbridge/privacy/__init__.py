"""Differential privacy: the [privacy] table (config), Google's dp-accounting behind one function
pair (accountant), client-level DP-FedAvg as a wrapper around a strategy (dpfedavg), and what a
run's methods spend (budget). Sample-level DP-SGD itself lives in the batched engine: the MLP
kernels' ghost norms (kernels), per-example gradients of any other model (fedbridge.per_sample)."""
