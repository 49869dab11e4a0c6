"""Tools to test replog and the state machines built on it: the deterministic cluster simulator,
its safety invariants, and the linearizability checker."""
