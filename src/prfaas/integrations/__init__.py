"""Adapters that let other inference engines use prfaas's transport and scheduling."""
