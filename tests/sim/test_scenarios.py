"""Scenario figures computed on hand-made outcomes."""

from prfaas.sim.metrics import RunResult, Series
from prfaas.sim.request import SimRequest
from prfaas.sim.scenarios import burst_recovery


def outcome(ttft_of: dict[int, float]) -> RunResult:
    """One arrival per second for 0..899 s; TTFT 1 s unless given."""
    requests = []
    for t in range(900):
        r = SimRequest(f"r{t}", float(t), 100, 1)
        r.first_token_s = t + ttft_of.get(t, 1.0)
        requests.append(r)
    return RunResult({}, Series(), requests)


def test_recovery_waits_until_the_p99_stays_back() -> None:
    # burst over [300, 420); slow TTFTs until 480 s, and one late straggler at 500 s
    slow = {t: 20.0 for t in range(300, 480)}
    slow[500] = 20.0
    got = burst_recovery(outcome(slow), 300.0, 420.0)
    assert got["pre_burst_p99_ttft_s"] == 1.0
    assert got["peak_window_p99_ttft_s"] == 20.0
    assert got["recovery_s"] == 510.0 - 420.0  # first window clear of the straggler at 500 s


def test_never_recovering_reports_none() -> None:
    slow = {t: 20.0 for t in range(300, 900)}
    assert burst_recovery(outcome(slow), 300.0, 420.0)["recovery_s"] is None
