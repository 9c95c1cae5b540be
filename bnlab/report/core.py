"""The report's core: verdicts, rules, results, and the registry of sections and figures.

A section (a claim, or a mechanism study) is one decorated function:

    LR_RULE = Rule('''Runs: ... SUPPORTED if ...''', VALUES)

    @section("lr", "Learning rate", "BN allows higher learning rates.", LR_RULE,
             figures=("lr_accuracy",))
    def lr_claim(tables: RunTables) -> Finding:
        ...
        return Finding(verdict, numbers=..., evidence=..., setting=..., notes=..., data=...)

The decorator registers it (registration order is report order) and turns it into a
`Section`: calling it with the run tables returns the full `ClaimResult`, with the
key, title, statement, rule and figures the decorator declared. The verdict table,
the section order and the CLI's `--experiment` choices all read `SECTIONS`.

A figure is one decorated function too (`@figure("lr_accuracy")`), drawing a
ClaimResult into a matplotlib Figure; `FIGURES` maps its key to it.

Rules are string constants, not docstrings, so `python -OO` (which strips
docstrings) prints the same report.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from bnlab.report.load import RunTables
    from bnlab.report.select import Setting

SUPPORTED, NOT_SUPPORTED = "SUPPORTED", "NOT SUPPORTED"
INCONCLUSIVE, NO_DATA = "INCONCLUSIVE", "NO DATA"
DESCRIPTIVE = "DESCRIPTIVE"  # a section that compares but tests no claim
# A claim compared against several arms: SUPPORTED against some, NOT SUPPORTED against
# others (each comparison keeps its own verdict; that is a finding, not a problem).
MIXED = "MIXED"
VERDICTS = (SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE, NO_DATA, DESCRIPTIVE, MIXED)


@dataclass(frozen=True)
class Rule:
    """A decision rule in words, with the constants it quotes filled in.

    `text` is a template (`{name}` placeholders from `values`); its whitespace is
    folded, so it can be written as an indented triple-quoted string.
    """

    text: str
    values: Mapping[str, str] = field(default_factory=dict)
    # Bumped whenever the rule changes; a rule changed after its runs existed keeps
    # its old version computable (`superseded`), and the report shows both verdicts.
    version: int = 1

    def render(self) -> str:
        return " ".join(self.text.format(**self.values).split())


@dataclass(frozen=True)
class Verdict:
    """One comparison a section decides (e.g. "vs Fixup"): its effect and verdict.

    `effect` is the measured effect in the claimed direction (positive supports the
    claim) with its 95% interval, in `unit`; `seeds` the seeds per group involved.
    """

    against: str  # what the claim is compared with, e.g. "vs Fixup"
    verdict: str  # one of VERDICTS
    effect: float | None = None
    low: float | None = None
    high: float | None = None
    unit: str = ""
    seeds: str = ""  # e.g. "3 vs 3"
    why: str = ""  # a short reason, e.g. "exploratory: fewer than 3 seeds"
    # True when `why` names something that keeps the effect from deciding (a best lr
    # at its ladder's edge, censoring, an arm that does not train): `headline` skips it.
    blocked: bool = False

    def effect_text(self) -> str:
        if self.effect is None:
            return "–"
        if self.low is None or self.high is None or self.low != self.low:  # NaN: no interval
            return f"{self.effect:+.3g} {self.unit}".strip()
        return f"{self.effect:+.3g} [{self.low:+.3g}, {self.high:+.3g}] {self.unit}".strip()


def overall(verdicts: Sequence[Verdict]) -> str:
    """A section's headline from its comparisons: their verdict when the decided ones
    agree, MIXED when some are SUPPORTED and others NOT SUPPORTED, else INCONCLUSIVE."""
    decided = {v.verdict for v in verdicts} & {SUPPORTED, NOT_SUPPORTED}
    if len(decided) == 2:
        return MIXED
    if decided:
        return decided.pop()
    return INCONCLUSIVE


def headline(verdicts: Sequence[Verdict]) -> str:
    """A section's headline from its comparisons, for the rules of issue 24 on (lr v4,
    depth v3, batch v4, ...): the comparisons that were *measured* -- an effect with
    an interval and no blocking reason in `why` other than the verdict's own -- must
    agree. SUPPORTED or NOT SUPPORTED when every measured row says so; MIXED when
    measured rows disagree (SUPPORTED beside NOT SUPPORTED, or beside a measured but
    undecided INCONCLUSIVE row); INCONCLUSIVE when nothing was decided. Rows without a
    measured effect (an arm that never trains, missing runs) do not count, and each
    keeps its own verdict in the table. `overall` (the earlier rules' headline) stays
    for the sections decided before it."""
    measured = [
        v.verdict
        for v in verdicts
        if v.effect is not None and v.low is not None and v.low == v.low and not v.blocked
    ]
    decided = set(measured) & {SUPPORTED, NOT_SUPPORTED}
    if not decided:
        return INCONCLUSIVE
    if len(set(measured)) > 1:
        return MIXED
    return decided.pop()


@dataclass
class Finding:
    """What a section function returns: its verdict and the evidence for it."""

    verdict: str  # one of VERDICTS
    numbers: dict[str, Any] = field(default_factory=dict)  # the figures that decided it
    evidence: pd.DataFrame = field(default_factory=pd.DataFrame)  # the report's table
    setting: Setting | None = None  # dataset, preset, scale of the runs used
    notes: list[str] = field(default_factory=list)  # runs left out and why
    data: dict[str, pd.DataFrame] = field(default_factory=dict)  # numeric points for plots
    figures: Sequence[str] | None = None  # None: the figures the section declares
    comparisons: list[Verdict] = field(default_factory=list)  # one per arm compared


def compared(
    rows: list[Verdict],
    numbers: dict[str, Any],
    evidence: pd.DataFrame,
    setting: Setting | None,
    notes: list[str],
    data: dict[str, pd.DataFrame],
    figures: Sequence[str] | None = None,
) -> Finding:
    """A section decided by comparisons: `rows` are its verdict rows, the headline their
    common verdict (`overall`)."""
    return Finding(overall(rows), numbers, evidence, setting, notes, data, figures, rows)


def no_data(notes: list[str]) -> Finding:
    """No run matched the section's selection: nothing to decide, nothing to draw."""
    return Finding(NO_DATA, notes=notes, figures=())


@dataclass
class ClaimResult:
    key: str
    title: str
    claim: str
    verdict: str  # one of VERDICTS
    rule: str
    numbers: dict[str, Any]
    evidence: pd.DataFrame
    figures: list[str]  # keys of FIGURES
    setting: Setting | None = None
    notes: list[str] = field(default_factory=list)
    data: dict[str, pd.DataFrame] = field(default_factory=dict)
    comparisons: list[Verdict] = field(default_factory=list)
    version: int = 1
    # Older versions of the rule, decided on the same runs: (version, verdict, rule text).
    superseded: list[tuple[int, str, str]] = field(default_factory=list)


SectionFn = Callable[["RunTables"], Finding]


@dataclass(frozen=True)
class OldRule:
    """A superseded version of a section's rule, still computable."""

    rule: Rule
    fn: SectionFn


@dataclass(frozen=True)
class Section:
    """A registered section: its declaration, and the function that decides it."""

    key: str
    title: str
    claim: str
    rule: Rule
    figures: tuple[str, ...]
    fn: SectionFn
    current: bool = True  # False: a superseded version (it decides no older ones)

    def __call__(self, tables: RunTables) -> ClaimResult:
        found = self.fn(tables)
        figures = self.figures if found.figures is None else found.figures
        old = SUPERSEDED.get(self.key, []) if self.current else []
        old = sorted(old, key=lambda o: -o.rule.version)
        return ClaimResult(
            key=self.key,
            title=self.title,
            claim=self.claim,
            verdict=found.verdict,
            rule=self.rule.render(),
            numbers=found.numbers,
            evidence=found.evidence,
            figures=list(figures),
            setting=found.setting,
            notes=found.notes,
            data=found.data,
            comparisons=found.comparisons,
            version=self.rule.version,
            superseded=[(o.rule.version, o.fn(tables).verdict, o.rule.render()) for o in old],
        )


SECTIONS: dict[str, Section] = {}
SUPERSEDED: dict[str, list[OldRule]] = {}
FIGURES: dict[str, Callable[[ClaimResult], Figure]] = {}


def section(
    key: str, title: str, claim: str, rule: Rule, figures: Sequence[str] = ()
) -> Callable[[SectionFn], Section]:
    """Register a section function under `key` (in report order)."""

    def register(fn: SectionFn) -> Section:
        if key in SECTIONS:
            raise ValueError(f"report section {key!r} is registered twice")
        SECTIONS[key] = Section(key, title, claim, rule, tuple(figures), fn)
        return SECTIONS[key]

    return register


def superseded(key: str, rule: Rule) -> Callable[[SectionFn], Section]:
    """Keep an older version of section `key`'s rule computable: the report decides it
    on the same runs and shows its verdict beside the current one (the verdict is all
    it shows of it: no figures). Returns it as a Section too, so it can be called on
    its own."""

    def register(fn: SectionFn) -> Section:
        versions = [o.rule.version for o in SUPERSEDED.get(key, [])]
        if rule.version in versions:
            raise ValueError(f"rule version {rule.version} of {key!r} is registered twice")
        SUPERSEDED.setdefault(key, []).append(OldRule(rule, fn))
        return Section(key, "", "", rule, (), fn, current=False)

    return register


def figure(
    key: str,
) -> Callable[[Callable[[ClaimResult], Figure]], Callable[[ClaimResult], Figure]]:
    """Register a figure function under `key` (a section's `figures` names it)."""

    def register(fn: Callable[[ClaimResult], Figure]) -> Callable[[ClaimResult], Figure]:
        if key in FIGURES:
            raise ValueError(f"report figure {key!r} is registered twice")
        FIGURES[key] = fn
        return fn

    return register
