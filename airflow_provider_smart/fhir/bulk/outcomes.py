"""Summaries of the OperationOutcomes in a manifest's error files, most severe first."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from airflow_provider_smart.fhir.errors import issue_text, operation_outcome_issues

SEVERITIES: tuple[str, ...] = ("fatal", "error", "warning", "information")
_RANK = {name: n for n, name in enumerate(SEVERITIES)}


def severity_rank(severity: str) -> int:
    """0 for fatal ... 3 for information; unknown severities count as error."""
    return _RANK.get(severity, _RANK["error"])


@dataclass
class OutcomeSummary:
    """Counts per severity and the first ``keep`` messages per severity."""

    keep: int = 20
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SEVERITIES, 0))
    messages: dict[str, list[str]] = field(default_factory=lambda: {s: [] for s in SEVERITIES})

    def add_outcome(self, outcome: dict[str, Any]) -> None:
        issues = operation_outcome_issues(outcome)
        if not issues:
            self._add("error", "OperationOutcome with no issues")
        for issue in issues:
            sev = issue.get("severity") if isinstance(issue.get("severity"), str) else "error"
            self._add(sev if sev in _RANK else "error", issue_text(issue))

    def _add(self, severity: str, text: str) -> None:
        self.counts[severity] += 1
        if len(self.messages[severity]) < self.keep:
            self.messages[severity].append(text)

    def merge(self, other: OutcomeSummary | dict[str, Any]) -> None:
        data = other.to_dict() if isinstance(other, OutcomeSummary) else other
        for sev in SEVERITIES:
            self.counts[sev] += int(data.get("counts", {}).get(sev, 0))
            for text in data.get("messages", {}).get(sev, []):
                if len(self.messages[sev]) < self.keep:
                    self.messages[sev].append(text)

    def at_least(self, severity: str) -> int:
        """How many issues are at least as severe as ``severity``."""
        limit = severity_rank(severity)
        return sum(n for sev, n in self.counts.items() if severity_rank(sev) <= limit)

    def sorted_messages(self) -> list[str]:
        return [f"[{sev}] {text}" for sev in SEVERITIES for text in self.messages[sev]]

    def to_dict(self) -> dict[str, Any]:
        return {"counts": dict(self.counts), "messages": {k: list(v) for k, v in self.messages.items()}}
