"""The batch scheduler: decides what runs in the next step of one instance. Plain Python."""
