"""Deployment: `prfaas serve | worker | status`, the deploy config, the launcher and the
live control loop. Nothing on the request path imports it."""
