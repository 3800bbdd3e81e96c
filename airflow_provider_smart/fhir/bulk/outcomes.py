"""Summaries of the OperationOutcomes in a manifest's error files, most severe first.

Every issue counts (per severity and per ``severity/code``); the first ``keep`` messages per severity
are kept, each cleaned with :func:`~..transport.sanitize.safe_text` because they are
server text that reaches the task log, the XCom summary and ``_SUCCESS``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from airflow_provider_smart.fhir.errors import issue_text, operation_outcome_issues
from airflow_provider_smart.transport.sanitize import safe_text

SEVERITIES: tuple[str, ...] = ("fatal", "error", "warning", "information")
_RANK = {name: n for n, name in enumerate(SEVERITIES)}
#: Distinct ``severity/code`` groups kept; the rest are counted under ``other``.
_MAX_CODES = 50


def severity_rank(severity: str) -> int:
    """0 for fatal ... 3 for information; unknown severities count as error."""
    return _RANK.get(severity, _RANK["error"])


@dataclass
class OutcomeSummary:
    """Counts per severity and per ``severity/code``, the total, and the first ``keep`` messages per severity."""

    keep: int = 20
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SEVERITIES, 0))
    by_code: dict[str, int] = field(default_factory=dict)
    messages: dict[str, list[str]] = field(default_factory=lambda: {s: [] for s in SEVERITIES})

    def add_outcome(self, outcome: dict[str, Any]) -> None:
        issues = operation_outcome_issues(outcome)
        if not issues:
            self._add("error", "unknown", "OperationOutcome with no issues")
        for issue in issues:
            sev = issue.get("severity") if isinstance(issue.get("severity"), str) else "error"
            code = issue.get("code") if isinstance(issue.get("code"), str) else "unknown"
            self._add(sev if sev in _RANK else "error", safe_text(code, limit=40), safe_text(issue_text(issue)))

    def _add(self, severity: str, code: str, text: str, n: int = 1) -> None:
        self.counts[severity] += n
        group = f"{severity}/{code}"
        if group not in self.by_code and len(self.by_code) >= _MAX_CODES:
            group = f"{severity}/other"
        self.by_code[group] = self.by_code.get(group, 0) + n
        if text and len(self.messages[severity]) < self.keep:
            self.messages[severity].append(text)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def merge(self, other: OutcomeSummary | dict[str, Any]) -> None:
        data = other.to_dict() if isinstance(other, OutcomeSummary) else other
        counts = data.get("counts", {})
        by_code = data.get("by_code")
        if not isinstance(by_code, dict):  # records written before codes were kept
            by_code = {f"{sev}/unknown": int(counts.get(sev, 0)) for sev in SEVERITIES if counts.get(sev)}
        for group, n in by_code.items():
            sev, _, code = str(group).partition("/")
            sev = sev if sev in _RANK else "error"
            self._add(sev, safe_text(code, limit=40), "", int(n))
        for sev in SEVERITIES:
            for text in data.get("messages", {}).get(sev, []):
                if len(self.messages[sev]) < self.keep:
                    self.messages[sev].append(safe_text(text))

    def at_least(self, severity: str) -> int:
        """How many issues are at least as severe as ``severity``."""
        limit = severity_rank(severity)
        return sum(n for sev, n in self.counts.items() if severity_rank(sev) <= limit)

    def sorted_messages(self) -> list[str]:
        return [f"[{sev}] {text}" for sev in SEVERITIES for text in self.messages[sev]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "counts": dict(self.counts),
            "by_code": dict(sorted(self.by_code.items())),
            "total": self.total,
            "messages": {k: list(v) for k, v in self.messages.items()},
        }
