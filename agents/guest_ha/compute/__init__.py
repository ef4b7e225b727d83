"""Compute agent: heartbeats every opted-in VM on this host over its channel."""
