"""What makes attacks fast without changing them: L-BFGS, batched problems, replicated models."""
