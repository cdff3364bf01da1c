"""The model side, and the only torch: loading a `state tx train` run, its forward, ΔY and Jacobians."""
