"""Controller server: receives events from compute agents and reports faults on."""
