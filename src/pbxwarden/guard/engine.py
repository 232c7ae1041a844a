"""The fraud guard: authorizes every costly call attempt, with reasons a person can read.

Pure logic behind the :class:`pbxwarden.pbx.policy.CallAuthorizer` hook: a decision
depends on the attempt, the tenant's policy and the guard's own state (calls in
progress, recent attempts, spend, learned baselines, inbound calls), all in memory
here; the clock is the attempt's time, so the simulator runs it on simulated days.
Side effects leave as data: alerts (with a suspension flag) in :attr:`Guard.outbox`
and calls to cut off from :meth:`Guard.police`; the server acts on them.

Rules, in order (the first that refuses decides):
1. a suspended extension makes no costly call;
2. the destination must be a valid number;
3. the tenant's deny list, then its allow list (an allowed prefix skips 4-6);
4. international calls only to countries the tenant allows (diversions abroad only
   with ``allow_international_forwarding``);
5. premium-rate, shared-cost and other special numbers only if allowed;
6. destinations on the bundled high-risk list (revenue-share fraud) only if allowed;
7. limits (:func:`pbxwarden.guard.rules.limits`): calls in progress, attempts per
   minute and hour, one foreign prefix in 10 minutes, spend per hour and day (learned);
8. correlations (:mod:`pbxwarden.guard.rules`): wangiri callbacks, test call then pump
   and spread over a tenant's extensions into one dear range, the slow drip;
9. the anomaly score from learned behaviour below ``block_score``.

Actions are graduated: the one anomalous call is refused with its reason; a pattern
raises an alert; an extension is suspended only on corroborated fraud, two
independent signs of compromise within 24 hours (:data:`SIGNALS`). Rules in
report-only (a tenant's first ``learning_days`` for the learned ones, or listed in
``report_only``) allow the call and raise a "would have refused" alert instead.
"""

from __future__ import annotations

import datetime as dt
import functools
import ipaddress
from collections import deque
from dataclasses import dataclass

from pbxwarden.guard import learn, rules
from pbxwarden.guard.baseline import DAY
from pbxwarden.guard.destinations import RiskEntry, judge_destination, load_high_risk
from pbxwarden.guard.memory import GuardMemory
from pbxwarden.guard.policy import GuardConfig, PolicyBook, PolicyOverride, TenantPolicy
from pbxwarden.guard.rates import RateTable
from pbxwarden.guard.shared import (
    SPEND_UNKNOWN,
    Admission,
    Ask,
    SharedAttempts,
    SharedCounts,
    SharedSpend,
    SharedSuspensions,
)
from pbxwarden.guard.state import (
    HOUR,
    Active,
    ExtState,
    Inbound,
    RangeState,
    Signal,
    TenantState,
)
from pbxwarden.pbx.numbers import Destination
from pbxwarden.pbx.policy import DIVERSIONS, DIVERTED, NATIONAL_ALLOWED, CallAttempt, Decision

__all__ = [
    "Guard",
    "GuardAlert",
    "GuardConfig",
    "PolicyOverride",
    "RiskEntry",
    "TenantPolicy",
    "load_high_risk",
]

COSTLY_KINDS = (
    "external",
    "forwarded",
    "transferred",
    "carrier-transfer",
    "group",
    "forward-change",
)
# Signs that an extension is in an attacker's hands; two different ones within 24 hours
# suspend it (one alone refuses the call and alerts).
SIGNALS = {
    "recon": "probes aimed at its number before a costly diversion",
    "diversion-refused": "inbound calls diverted to a number it may not call",
    "revenue-share": "the phone itself diverting to premium-rate or high-risk numbers",
    "probing": "three or more calls to numbers it may not call within an hour",
    "new-network": "a costly call from a network it never used",
    "range": "a test call then a burst, or a burst, into a new dear range",
    "anomaly": "a call scored as likely fraud against its own history",
}
SIGNAL_WINDOW = DAY
PROBING = 3


@functools.lru_cache(maxsize=65_536)
def network_of(source: str) -> str:
    """The /24 (IPv4) or /48 (IPv6) an attempt came from (``udp:192.0.2.7:5060``),
    or "" when the source is no address."""
    _, _, rest = source.partition(":")
    host = rest[1 : rest.find("]")] if rest.startswith("[") else rest.rsplit(":", 1)[0]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return ""
    prefix = 24 if address.version == 4 else 48
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


@dataclass(frozen=True, slots=True)
class GuardAlert:
    tenant: str
    extension: str | None
    severity: str  # "warning" or "critical"
    rule: str
    summary: str
    reasons: tuple[str, ...]
    at: float
    suspend: bool = False  # the guard suspended the extension
    kind: str = ""  # what was judged (a call out, a diversion being set, one followed)
    dedupe: str | None = None  # repeats with the same key count into one open alert

    @property
    def key(self) -> str:
        """Repeats of the same thing share an open alert; a different kind of event for
        the same extension (a diversion set, then one followed) is an alert of its own."""
        if self.dedupe is not None:
            return self.dedupe
        key = f"{self.tenant}/{self.extension or '-'}/{self.rule}"
        return f"{key}/{self.kind}" if self.kind else key


class Guard(GuardMemory):
    def __init__(
        self,
        config: GuardConfig | None = None,
        high_risk: list[RiskEntry] | None = None,
        rates: RateTable | None = None,
    ) -> None:
        self.config = config or GuardConfig()
        self.book = PolicyBook(self.config)
        self.high_risk = high_risk if high_risk is not None else load_high_risk()
        by_length: dict[int, dict[str, RiskEntry]] = {}
        for entry in self.high_risk:
            by_length.setdefault(len(entry.prefix), {}).setdefault(entry.prefix, entry)
        self._risk_by_length = sorted(by_length.items(), reverse=True)
        if rates is None:
            rates = (
                RateTable.from_file(self.config.rates_file)
                if self.config.rates_file
                else RateTable.bundled()
            )
        self.rates = rates
        self.outbox: deque[GuardAlert] = deque(maxlen=10_000)
        # (kind, allow/deny, severity) -> count, for metrics
        self.decisions: dict[tuple[str, str, str], int] = {}
        # (tenant, rule) -> attempts a rule in report-only would have refused
        self.would_have: dict[tuple[str, str], int] = {}
        self._ext: dict[tuple[str, str], ExtState] = {}
        self._tenants: dict[str, TenantState] = {}
        self._active: dict[int, Active] = {}
        self._inbound: dict[int, Inbound] = {}
        self._cutoffs: list[tuple[int, str]] = []
        self._stored_suspensions: dict[tuple[str, str], str] = {}
        self.shared: SharedCounts | None = None  # several nodes: limits for all of them
        self.shared_attempts: SharedAttempts | None = None  # and rates (with ``shared``)
        self.shared_spend: SharedSpend | None = None  # several nodes: caps for all of them
        self.shared_suspensions: SharedSuspensions | None = None
        # several nodes sharing a database: each baseline is the merge of this node's
        # own learning (``Baseline.own``, what it stores) and the other nodes' rows
        self.merging = False

    def reconfigure(self, config: GuardConfig) -> None:
        """New policies (stored ones changed): counters and baselines are kept."""
        self.config = config
        self.book = PolicyBook(config)

    # -- the hook ------------------------------------------------------------------------

    def authorize(self, attempt: CallAttempt) -> Decision:
        decision = self._authorize(attempt)
        key = (attempt.kind, decision.label, decision.severity or "none")
        self.decisions[key] = self.decisions.get(key, 0) + 1
        return decision

    def _authorize(self, attempt: CallAttempt) -> Decision:
        if attempt.kind == "internal":
            return Decision(True, ("internal call between extensions",))
        if attempt.kind == "inbound":
            return Decision(True, ("inbound call to a DID",))
        now = attempt.at
        ext = self._ext_state(attempt.tenant, attempt.extension, now)
        if ext.suspended is not None:
            return Decision(
                False,
                (
                    f"extension {attempt.extension} is suspended ({ext.suspended}); an "
                    "administrator must resume it: pbxwarden extension resume",
                ),
                rule="suspended",
            )
        tenant_policy = self.book.tenant(attempt.tenant)
        local = tenant_policy.local(now)
        in_hours = tenant_policy.in_business_hours(local)
        policy = self.book.effective(attempt.tenant, attempt.extension, in_hours)
        dest = attempt.destination
        tenant = self._tenant_state(attempt.tenant, now)
        network = network_of(attempt.source) if attempt.kind == "external" else ""
        new_network = bool(
            network and ext.baseline.network_calls >= 10 and network not in ext.baseline.networks
        )
        if new_network:
            self._signal(ext, now, "new-network", f"a costly call from {attempt.source}")
        verdict = self._destination(policy, attempt, dest, in_hours)
        if isinstance(verdict, Decision):
            return self._refused_destination(attempt, ext, policy, verdict)
        if policy.suspend_on_critical and self._corroborated(ext, now):
            return self._refuse(
                attempt,
                ext,
                policy,
                "anomaly",
                ("refused as likely fraud: " + "; ".join(sorted({s.why for s in ext.signals})),),
                False,
                100,
                force=True,
            )
        assert dest is not None
        reasons = verdict
        rate = self.rates.per_minute(dest)
        learn.settle(ext, tenant, now)
        cur = self.rates.currency
        warnings: list[str] = []
        refusal = None
        others, spend_unknown = None, False
        if attempt.kind != "forward-change":
            if self.shared_spend is not None:
                others = self.shared_spend.others(attempt.tenant, attempt.extension, now)
                spend_unknown = others is None
            refusal = rules.limits(
                policy, attempt, ext, tenant, dest, warnings, cur, rate, others or rules.NONE
            )
        risk = self._high_risk(dest)
        # Scored even when a limit refuses: an attacker hammering a limit at night is more
        # than a limit reached, and must be stopped (and its calls cut), not just slowed.
        score, why = rules.score(
            attempt,
            ext,
            tenant,
            dest,
            rate,
            local,
            in_hours,
            risk.name if risk is not None else None,
            cur,
            new_network,
        )
        learning = self.learning(attempt.tenant, now)
        odd = new_network or (
            not dest.national
            and ext.baseline.calls >= 10
            and ext.baseline.country_seen_days(dest.country) == 0
        )
        pattern = self._patterns(attempt, policy, ext, tenant, dest, rate, risk, local, why, odd)
        if pattern is not None:
            rule, reason, signal = pattern
            if rule == "recon" and signal == "recon":
                score = min(100, score + rules.W_RECON)
                why.append(reason)
            else:
                if signal:
                    self._signal(ext, now, signal, reason)
                return self._refuse(
                    attempt, ext, policy, rule, (reason, *why, *reasons), learning, score
                )
        if refusal is not None and score < policy.block_score:
            self._alert(attempt, refusal)
            return refusal
        if score >= policy.block_score:
            rule = "recon" if any("reconnaissance" in w for w in why) else "anomaly"
            if not policy.report_only_rule(rule, learning):
                self._signal(ext, now, rule, why[0] if why else "anomaly")
            text = f"refused as likely fraud (risk score {score}/100): " + "; ".join(why)
            return self._refuse(attempt, ext, policy, rule, (text, *reasons), learning, score)
        if spend_unknown and self.shared_spend is not None and self.shared_spend.fail_closed:
            refused = Decision(False, (SPEND_UNKNOWN, *reasons), status=503, rule="spend-cap")
            self._alert(attempt, refused)
            return refused
        if self.shared is not None and attempt.kind != "forward-change":
            if self.shared_attempts is not None:
                watched = attempt.kind == "external" and rules.watched(dest, rate, risk is not None)
                ask = Ask(
                    policy.max_concurrent_per_extension,
                    policy.max_concurrent_calls,
                    policy.calls_per_minute,
                    policy.calls_per_hour,
                    dest.e164[:6] if rules.costly(dest) else "",
                    policy.same_prefix_calls,
                    rules.range_of(dest.e164) if watched else "",
                    dest.e164,
                    odd,
                )
                answer = self.shared_attempts.admit(attempt.tenant, attempt.extension, ask, now)
                if answer is not None and ask.range:
                    spread = self._range_together(attempt, tenant, dest, rate, risk, odd, answer)
                    if spread is not None:
                        reason, tenant_wide = spread
                        if answer.refused is None and not policy.report_only_rule(
                            "range", learning
                        ):
                            self.shared_attempts.withdraw()
                        self._range_found(attempt, policy, ask.range, reason, tenant_wide)
                        self._signal(ext, now, "range", reason)
                        return self._refuse(
                            attempt, ext, policy, "range", (reason, *why, *reasons), learning, score
                        )
                full = answer.refused if answer is not None else None
                status = answer.status if answer is not None else 486
            else:
                full = self.shared.reserve(
                    attempt.tenant,
                    attempt.extension,
                    policy.max_concurrent_per_extension,
                    policy.max_concurrent_calls,
                    now,
                )
                status = 486
            if full is not None:
                refused = Decision(False, (full, *reasons), status=status, rule="limit")
                self._alert(attempt, refused)
                return refused
        if attempt.kind != "forward-change":
            learn.record(attempt, ext, dest, local, network)
        else:
            self._record_forward(attempt, ext, dest)
        severity, rule = None, ""
        if score >= policy.alert_score:
            ext.unusual.append(now)
            severity, rule = "warning", "anomaly"
            warnings.insert(0, f"unusual call (risk score {score}/100): " + "; ".join(why))
        else:
            reasons.extend(why)
        if severity is None and warnings:
            severity, rule = "warning", "limit"
        decision = Decision(True, (*warnings, *reasons), score=score, severity=severity, rule=rule)
        if severity is not None:
            self._alert(attempt, decision)
        return decision

    def _patterns(
        self,
        attempt: CallAttempt,
        policy: TenantPolicy,
        ext: ExtState,
        tenant: TenantState,
        dest: Destination,
        rate: float,
        risk: RiskEntry | None,
        local: dt.datetime,
        why: list[str],
        odd: bool,
    ) -> tuple[str, str, str] | None:
        """The first correlation that matches: (rule, reason, signal or "")."""
        if attempt.kind in DIVERTED and dest.e164 in ext.refused_forward:
            when = dt.datetime.fromtimestamp(ext.refused_forward[dest.e164], local.tzinfo)
            return (
                "recon" if rules.recon(attempt, ext) else "anomaly",
                f"a diversion to {dest.e164} was refused at {when:%Y-%m-%d %H:%M}, and calls are "
                "diverted to it anyway (set on the phone itself)",
                "diversion-refused",
            )
        habitual = dest.e164 in ext.baseline.forward_targets or (
            attempt.kind in DIVERTED and dest.e164 == ext.forward_set
        )
        watched = rules.watched(dest, rate, risk is not None)
        if attempt.kind in DIVERSIONS and watched and not habitual:
            found = rules.recon(attempt, ext)
            if found is not None:
                return "recon", found, "recon"
        if attempt.kind != "external":
            return None
        found = rules.wangiri(attempt, tenant, dest)
        if found is not None:
            return "wangiri", found, ""
        if rules.watched(dest, rate, risk is not None):
            is_dear = rules.dear(dest, rate, risk is not None)
            spread = rules.dear_range(attempt, tenant, dest, attempt.extension, is_dear, odd)
            if odd:
                prefix = rules.range_of(dest.e164)
                state = tenant.ranges.get(prefix)
                if state is None and len(tenant.ranges) < 2_000:
                    state = tenant.ranges[prefix] = RangeState(attempt.at)
                if state is not None and (len(state.odd) < 100 or attempt.extension in state.odd):
                    state.odd[attempt.extension] = attempt.at
            if spread is not None:
                reason, tenant_wide = spread
                self._range_found(attempt, policy, rules.range_of(dest.e164), reason, tenant_wide)
                return "range", reason, "range"
        found = rules.drip(attempt, ext, tenant, dest, local.toordinal(), self.rates.currency)
        if found is not None:
            return "drip", found, ""
        return None

    def _refuse(
        self,
        attempt: CallAttempt,
        ext: ExtState,
        policy: TenantPolicy,
        rule: str,
        reasons: tuple[str, ...],
        learning: bool,
        score: int,
        force: bool = False,
    ) -> Decision:
        """Refuse (or, in report-only, allow and report) the one call; alert on a pattern;
        suspend on corroborated fraud."""
        now = attempt.at
        if not force and policy.report_only_rule(rule, learning):
            key = (attempt.tenant, rule)
            self.would_have[key] = self.would_have.get(key, 0) + 1
            decision = Decision(
                True,
                (f"would have refused ({rule}, report-only): {reasons[0]}", *reasons[1:]),
                score=score,
                severity="warning",
                rule=rule,
            )
            self._alert(attempt, decision, would_have=True)
            return decision
        ext.unusual.append(now)
        if attempt.kind == "forward-change" and attempt.destination is not None:
            self._refused_forward(ext, attempt.destination.e164, now)
        repeated = sum(1 for t in ext.unusual if t > now - DAY) >= 2
        alert = rule != "anomaly" or repeated
        suspend = policy.suspend_on_critical and self._corroborated(ext, now)
        decision = Decision(
            False,
            reasons,
            score=score,
            severity=("critical" if suspend else "warning") if alert or suspend else None,
            rule=rule,
        )
        if decision.severity is not None:
            self._alert(attempt, decision, suspend=suspend)
        return decision

    def _refused_destination(
        self, attempt: CallAttempt, ext: ExtState, policy: TenantPolicy, decision: Decision
    ) -> Decision:
        now = attempt.at
        if attempt.kind == "forward-change" and attempt.destination is not None:
            self._refused_forward(ext, attempt.destination.e164, now)
        if attempt.kind == "external" and decision.rule == "destination":
            ext.refused.append(now)
            while ext.refused and ext.refused[0] <= now - HOUR:
                ext.refused.popleft()
            if len(ext.refused) >= PROBING:
                self._signal(ext, now, "probing", decision.reasons[0])
        elif (
            attempt.kind in DIVERTED
            and attempt.kind not in ("group", "carrier-transfer")
            and decision.severity == "critical"
        ):
            # (a group's member is the admin's configuration, refused on every call: an
            # alert to fix it, not a sign that a phone was taken over; nor is what the
            # far party of a carrier's call asked for)
            self._signal(ext, now, "diversion-refused", decision.reasons[0])
            dest = attempt.destination
            if (
                dest is not None
                and dest.valid
                and (dest.number_type not in NATIONAL_ALLOWED or self._high_risk(dest) is not None)
            ):
                self._signal(ext, now, "revenue-share", decision.reasons[0])
        if attempt.kind in DIVERSIONS:
            probes = rules.recon(attempt, ext)
            if probes is not None:
                self._signal(ext, now, "recon", probes)
                decision = Decision(
                    False,
                    (*decision.reasons, probes),
                    decision.status,
                    decision.score,
                    decision.severity,
                    decision.rule,
                )
        suspend = (
            decision.severity is not None
            and policy.suspend_on_critical
            and self._corroborated(ext, now)
        )
        if decision.severity is not None:
            if suspend:
                decision = Decision(
                    False,
                    decision.reasons,
                    decision.status,
                    decision.score,
                    "critical",
                    decision.rule,
                )
            elif decision.severity == "critical":  # one sign alone: refused, not suspended
                decision = Decision(
                    False,
                    decision.reasons,
                    decision.status,
                    decision.score,
                    "warning",
                    decision.rule,
                )
            self._alert(attempt, decision, suspend=suspend)
        return decision

    @staticmethod
    def _refused_forward(ext: ExtState, e164: str, now: float) -> None:
        refused = ext.refused_forward
        if len(refused) >= 20:
            refused.pop(min(refused, key=refused.__getitem__))
        refused[e164] = now
        if ext.forward_set == e164:
            ext.forward_set = ""

    def _signal(self, ext: ExtState, now: float, kind: str, why: str) -> None:
        signals = ext.signals
        if signals and signals[0].at <= now - SIGNAL_WINDOW:
            signals[:] = [s for s in signals if s.at > now - SIGNAL_WINDOW]
        if len(signals) < 50:
            signals.append(Signal(now, kind, why))

    def _corroborated(self, ext: ExtState, now: float) -> bool:
        kinds = {s.kind for s in ext.signals if s.at > now - SIGNAL_WINDOW}
        return len(kinds) >= 2

    def _range_found(
        self, attempt: CallAttempt, policy: TenantPolicy, prefix: str, reason: str, wide: bool
    ) -> None:
        """A range pattern matched: calls into the range are cut and refused for a day
        (unless the rule is in report-only), on every node of a PBX of several."""
        if policy.report_only_rule("range", self.learning(attempt.tenant, attempt.at)):
            return
        self._cut_range(attempt.tenant, attempt.extension, prefix, wide)
        state = self._tenant_state(attempt.tenant, attempt.at).ranges.get(prefix)
        if state is not None and state.blocked <= attempt.at:
            state.blocked = attempt.at + rules.RANGE_BLOCK
            state.why = reason[:160]
            if self.shared_attempts is not None:
                self.shared_attempts.range_marked(
                    attempt.tenant, prefix, None, state.blocked, state.why
                )

    def _range_together(
        self,
        attempt: CallAttempt,
        tenant: TenantState,
        dest: Destination,
        rate: float,
        risk: RiskEntry | None,
        odd: bool,
        seen: Admission,
    ) -> tuple[str, bool] | None:
        """The range patterns judged again with what the other nodes saw of the range
        (their attempts, a test call, a block): (why, spread) if one matches now."""
        if seen.refused is not None and seen.rule != "range":
            return None  # refused by a limit (or Redis down): that is the reason
        prefix = rules.range_of(dest.e164)
        state = tenant.ranges.get(prefix)
        if state is None:
            if len(tenant.ranges) >= 2_000:
                return None
            state = tenant.ranges[prefix] = RangeState(attempt.at)
        if seen.range_blocked is not None:  # found pumped on another node
            if seen.range_blocked[0] > state.blocked:
                state.blocked, state.why = seen.range_blocked
            return (seen.refused or state.why, False)
        state.remote = seen.range_calls
        state.remote_odd = dict(seen.range_odd)
        if state.test is None and seen.range_test is not None:
            state.test = seen.range_test
        is_dear = rules.dear(dest, rate, risk is not None)
        return rules.dear_range(attempt, tenant, dest, attempt.extension, is_dear, odd)

    def _cut_range(self, tenant: str, number: str, prefix: str, tenant_wide: bool) -> None:
        """Calls in progress into the range: this extension's, or the tenant's (spread)."""
        for ref, call in self._active.items():
            if (
                call.tenant == tenant
                and call.dear_range == prefix
                and (tenant_wide or call.extension == number)
            ):
                self._cutoffs.append((ref, f"calls into the dear range {prefix} refused"))

    def _destination(
        self,
        policy: TenantPolicy,
        attempt: CallAttempt,
        dest: Destination | None,
        in_hours: bool,
    ) -> Decision | list[str]:
        return judge_destination(policy, attempt, dest, in_hours, self._high_risk)

    def _high_risk(self, dest: Destination) -> RiskEntry | None:
        e164 = dest.e164
        for length, entries in self._risk_by_length:
            entry = entries.get(e164[:length])
            if entry is not None:
                return entry
        return None

    # -- learning ------------------------------------------------------------------------

    def _record_forward(self, attempt: CallAttempt, ext: ExtState, dest: Destination) -> None:
        ext.forward_set = dest.e164
        ext.forwards.append((attempt.at, dest.e164))
        if len(ext.forwards) > 100:
            ext.forwards.popleft()

    # -- outcomes ------------------------------------------------------------------------

    def _alert(
        self,
        attempt: CallAttempt,
        decision: Decision,
        suspend: bool = False,
        would_have: bool = False,
    ) -> None:
        state = self._ext.get((attempt.tenant, attempt.extension))
        if state is not None and (not decision.allow or decision.severity == "critical"):
            state.alerted_at = attempt.at  # learning pauses (an "unusual" warning does not)
        what = {
            "external": f"a call from extension {attempt.extension} to {attempt.dialed}",
            "forwarded": f"a call diverted by extension {attempt.extension} to {attempt.dialed}",
            "transferred": f"a call transferred by extension {attempt.extension} to "
            f"{attempt.dialed}",
            "carrier-transfer": f"a transfer of extension {attempt.extension}'s call to "
            f"{attempt.dialed}, asked for by the carrier's party",
            "group": f"a call to ring group {attempt.extension}'s member {attempt.dialed}",
            "forward-change": f"a diversion of extension {attempt.extension} to {attempt.dialed}",
        }.get(attempt.kind, f"a call to {attempt.dialed}")
        if would_have:
            verb = f"was allowed; the {decision.rule} rule (report-only) would have refused it"
            summary = f"Would have refused: {what}; {verb.split('; ', 1)[-1]}"
        else:
            verb = "was refused" if not decision.allow else "was allowed but looks unusual"
            summary = f"{what[0].upper()}{what[1:]} {verb}"
        if suspend and state is not None:
            signs = sorted({s.kind for s in state.signals})
            reason = f"{decision.rule}: {decision.reasons[0]}"[:500]
            self.suspend(attempt.tenant, attempt.extension, reason)
            if self.shared_suspensions is not None:
                self.shared_suspensions.changed(
                    attempt.tenant, attempt.extension, reason, attempt.at, "guard"
                )
            summary += (
                f"; extension {attempt.extension} is suspended until an admin resumes it "
                f"(corroborated: {', '.join(signs)})"
            )
        self.outbox.append(
            GuardAlert(
                attempt.tenant,
                attempt.extension or None,
                decision.severity or "warning",
                f"report-only:{decision.rule}" if would_have else decision.rule or "guard",
                summary,
                decision.reasons,
                attempt.at,
                suspend,
                kind=attempt.kind,
            )
        )

    def _raise(
        self,
        tenant: str,
        extension: str,
        rule: str,
        summary: str,
        reasons: tuple[str, ...],
        at: float,
    ) -> None:
        state = self._ext.get((tenant, extension))
        if state is not None:
            state.alerted_at = at
        self.outbox.append(GuardAlert(tenant, extension, "critical", rule, summary, reasons, at))

    # -- call life cycle -----------------------------------------------------------------

    def on_call_start(self, attempt: CallAttempt, ref: int) -> None:
        if attempt.kind == "inbound":
            home = attempt.destination.country if attempt.destination is not None else "US"
            self._inbound[ref] = _new_inbound(attempt, home)
            return
        if attempt.kind not in COSTLY_KINDS or attempt.destination is None:
            return
        old = self._active.pop(ref, None)
        if old is not None:
            self._release(ref, old)
            if self.shared_spend is not None:
                self.shared_spend.ended(ref, attempt.at, 0.0)
        dest = attempt.destination
        policy = self.book.effective(attempt.tenant, attempt.extension, True)
        local = policy.local(attempt.at)
        rate = self.rates.per_minute(dest)
        ext = self._ext_state(attempt.tenant, attempt.extension, attempt.at)
        tenant = self._tenant_state(attempt.tenant, attempt.at)
        call = Active(
            attempt.tenant,
            attempt.extension,
            rate,
            local.weekday(),
            policy.max_call_minutes * 60.0,
            e164=dest.e164,
            country=dest.country,
            day=local.toordinal(),
        )
        if attempt.kind == "external":
            base = ext.baseline
            call.new_number = dest.e164 in base.ledger or (
                base.mature(attempt.at)
                and rules.costly(dest)
                and dest.e164 not in base.targets
                and not any(r[3] == dest.e164 for r in ext.recent if r[0] < attempt.at)
            )
            if rules.watched(dest, rate, self._high_risk(dest) is not None):
                prefix = rules.range_of(dest.e164)
                call.dear_range = prefix
                state = tenant.ranges.get(prefix)
                if state is None:
                    state = tenant.ranges[prefix] = RangeState(attempt.at)
                    if len(tenant.ranges) > 2_000:
                        tenant.prune(attempt.at)
                state.calls.append((attempt.at, attempt.extension, dest.e164))
                if len(state.calls) > 200:
                    state.calls.popleft()
        self._active[ref] = call
        ext.active.add(ref)
        tenant.active.add(ref)
        if self.shared is not None:
            self.shared.started(attempt.tenant, attempt.extension, ref, attempt.at)

    def on_call_answer(self, ref: int, at: float) -> None:
        call = self._active.get(ref)
        if call is not None and call.answered is None:
            call.answered = at
            ext = self._ext.get((call.tenant, call.extension))
            tenant = self._tenants.get(call.tenant)
            if ext is not None and tenant is not None:
                ext.spend.start(call.rate, at)
                tenant.spend.start(call.rate, at)
                if self.shared_spend is not None:
                    self.shared_spend.answered(call.tenant, call.extension, ref, call.rate, at)
        inbound = self._inbound.get(ref)
        if inbound is not None and inbound.answered is None:
            inbound.answered = at

    def on_call_end(self, ref: int, at: float) -> float | None:
        inbound = self._inbound.pop(ref, None)
        if inbound is not None:
            learn.inbound_ended(
                self._tenant_state(inbound.tenant, at),
                lambda: self._ext_state(inbound.tenant, inbound.extension, at),
                inbound,
                at,
            )
        call = self._active.pop(ref, None)
        if call is None:
            return None
        self._release(ref, call)
        if self.shared is not None:
            self.shared.ended(ref)
        if call.answered is None:
            return 0.0
        talked = max(0.0, at - call.answered)
        cost = talked / 60.0 * call.rate
        if self.shared_spend is not None:
            self.shared_spend.ended(ref, at, cost)
        ext = self._ext_state(call.tenant, call.extension, at)
        tenant = self._tenant_state(call.tenant, at)
        ext.spend.add(at, cost)
        tenant.spend.add(at, cost)
        ext.baseline.learn_spend(call.weekday, cost)
        tenant.baseline.learn_spend(call.weekday, cost)
        ext.dirty = tenant.dirty = True
        if ext.alerted_at <= at - DAY and ext.suspended is None:
            hour, day = ext.spend.totals(at)
            ext.baseline.learn_peak(call.day, hour, day)
            ext.baseline.learn_length(talked / 60.0)
            ext.baseline.learn_run(call.e164, call.day, talked / 60.0)
        if call.dear_range and talked <= rules.TEST_CALL_SECONDS:
            state = tenant.ranges.get(call.dear_range)
            if state is not None and state.test is None:
                state.test = (at, call.extension, call.e164)
                if self.shared_attempts is not None:
                    self.shared_attempts.range_marked(
                        call.tenant, call.dear_range, state.test, 0, ""
                    )
        if call.new_number:
            learn.ledger(ext, tenant, call, at, talked, cost)
        return round(cost, 4)

    def _release(self, ref: int, call: Active) -> None:
        ext = self._ext.get((call.tenant, call.extension))
        if ext is not None:
            ext.active.discard(ref)
            if call.answered is not None:
                ext.spend.stop(call.rate, call.answered)
        tenant = self._tenants.get(call.tenant)
        if tenant is not None:
            tenant.active.discard(ref)
            if call.answered is not None:
                tenant.spend.stop(call.rate, call.answered)

    def police(self, now: float) -> list[tuple[int, str]]:
        """Calls to cut off now: suspended extensions, spend caps, maximum duration,
        calls into a range found pumped."""
        cut, self._cutoffs = self._cutoffs, []
        over: dict[tuple[str, str], float] = {}  # extension -> dearest rate running
        for ref, call in self._active.items():
            if call.answered is None:
                continue
            if now - call.answered > call.max_seconds:
                cut.append((ref, f"costly call longer than {call.max_seconds / 60:g} minutes"))
                continue
            key = (call.tenant, call.extension)
            over[key] = max(over.get(key, 0.0), call.rate)
        for (tenant_name, number), dearest in over.items():
            ext = self._ext[(tenant_name, number)]
            policy = self.book.effective(tenant_name, number, True)
            hour, day = ext.spend.totals(now)
            tenant = self._tenants[tenant_name]
            tenant_day = tenant.spend.totals(now)[1]
            together = tenant_together = ""
            if self.shared_spend is not None:  # the other nodes' calls of the extension
                # from the cache only: police runs every second on every call in progress
                others = self.shared_spend.others(tenant_name, number, now, read=False)
                if others is not None:  # unknown (Redis down): not cut for that
                    hour, day, tenant_day = (
                        hour + others[0],
                        day + others[1],
                        tenant_day + others[2],
                    )
                    together = rules.TOGETHER if others[0] or others[1] else ""
                    tenant_together = rules.TOGETHER if others[2] else ""
            cur = self.rates.currency
            cap_hour, cap_day, how_hour, how_day = rules.spend_caps(
                policy, ext.baseline, 60 * dearest
            )
            breach = None
            if hour > cap_hour:
                breach = (
                    f"spent an estimated {rules.money(hour, cur)} in the last hour{together} "
                    f"(cap {cap_hour:g}, {how_hour})"
                )
            elif day > cap_day:
                breach = (
                    f"spent an estimated {rules.money(day, cur)} in 24 hours{together} "
                    f"(cap {cap_day:g}, {how_day})"
                )
            elif tenant_day > policy.tenant_spend_per_day:
                breach = (
                    f"tenant {tenant_name} spent an estimated {rules.money(tenant_day, cur)} in "
                    f"24 hours{tenant_together} (cap {policy.tenant_spend_per_day:g})"
                )
            if breach is None:
                continue
            refs = [r for r in ext.active if r in self._active]
            for ref in refs:
                cut.append((ref, f"spend cap: extension {number} {breach}"))
            self._raise(
                tenant_name,
                number,
                "spend-cap",
                f"{len(refs)} call(s) of extension {number} cut off: spend cap reached",
                (f"extension {number} {breach}",),
                now,
            )
        return cut


def _new_inbound(attempt: CallAttempt, home: str) -> Inbound:
    return Inbound(attempt.tenant, attempt.extension, attempt.caller, home, attempt.at)
