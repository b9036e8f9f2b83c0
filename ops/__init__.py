"""Operating Switchboard: the local stack launcher, the `sb` CLI, contract generation."""
