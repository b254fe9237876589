"""One inference instance: request state machine, batch scheduler, runner, sampler."""
