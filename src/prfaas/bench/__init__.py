"""`prfaas bench`: load generation against a running gateway, and its datasets."""
