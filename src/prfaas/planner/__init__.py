"""KV size and throughput from configs and profiles; the paper's model; t and P/D search.

Entry points: ``search.plan`` (one deployment -> ``PlanResult``), ``throughput`` (eqs. 3-6 as
vectorized functions, for the router's control loop and the simulator), ``build`` (a plan
YAML -> inputs and results), ``model.load_planner_model`` + ``efficiency`` (the calibrated
T_prefill estimate; ``calibration`` fits it) or ``roofline`` (estimates without a profile). KV
sizes per layer type live in ``prfaas.kvcache.spec``. No torch anywhere here.
"""
