"""Discrete-event simulator driving the real router policies and batch scheduler."""
