"""`prune --auto`: per-layer sparsities chosen from each layer's measured sensitivity.

The algorithm:
  1. Sensitivity: prune each layer alone at the sparsities of GRID (sweep.layer_sensitivity) and
     record its loss increase. Loss, not accuracy, is the cost: on a few hundred examples accuracy
     moves in steps of one example, while the loss is smooth. Each curve is made monotone (a running
     maximum: a cost that falls again at a higher sparsity is noise) and replaced by its lower convex hull.
  2. Allocation for a total sparsity T: minimise the sum of the layers' solo costs subject to the
     size-weighted total being T. With convex piecewise-linear costs the greedy solution is exact: take
     curve segments in order of cost per pruned weight, cheapest first, the last one partly, so the
     total is T to within one weight per layer (the policy rounds each layer's count). Large robust
     layers go far; small fragile ones (often the first and the last) stay nearly dense.
  3. With --sparsity T that allocation is used. Without it, T is the largest total sparsity whose
     *combined* accuracy drop, measured with all layers pruned together, stays within the budget
     (--max-accuracy-drop, default 0.01): bisection on T over [0, the largest probed] with PROBES
     evaluations; the best allocation within budget wins (none: nothing is pruned, and a note says so).
  4. Verify: the chosen allocation's combined drop is measured and reported; when a --sparsity target
     misses the budget a note says so, and --max-accuracy-drop (if given) fails the run with exit 4.
The chosen sparsities become exact-name per-layer overrides (scope=layer) and the normal pipeline runs
with them, so fine-tuning, --shrink, export and the report work as usual. The budget is checked right
after pruning, before any fine-tuning.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from prunecli.config import LayerOverride, PruneConfig
from prunecli.errors import ConfigError
from prunecli.outputs.report import Timings
from prunecli.run import sweep
from prunecli.structure import keras_graph

GRID = (0.2, 0.4, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98)
PROBES = 7  # combined evaluations when searching the highest total sparsity within budget
BIG = 1e9  # the cost of a point whose loss was not finite


@dataclass
class AutoPlan:
    budget: float
    target: float | None
    sparsities: dict[str, float]  # layer name -> chosen sparsity (free and fixed layers)
    fixed: dict[str, float]  # layers whose sparsity a recipe override set
    total_sparsity: float  # weighted by layer size over all pruned layers
    combined_drop: float
    probes: list[dict] = field(default_factory=list)  # {"total_sparsity", "accuracy_drop"} measured
    solo: dict[str, list] = field(default_factory=dict)  # layer -> [[sparsity, loss increase, accuracy drop]]
    notes: list[str] = field(default_factory=list)

    @property
    def within_budget(self) -> bool:
        return self.combined_drop <= self.budget + 1e-9

    def to_dict(self) -> dict:
        return {
            "algorithm": "least summed solo loss increase per layer (greedy on convex hulls), "
            "bisection on total sparsity against the combined accuracy drop (see prunecli/run/auto.py)",
            "budget": self.budget,
            "target_sparsity": self.target,
            "total_sparsity": round(self.total_sparsity, 6),
            "combined_accuracy_drop": round(self.combined_drop, 6),
            "within_budget": self.within_budget,
            "layer_sparsity": {k: round(v, 6) for k, v in self.sparsities.items()},
            "fixed_by_override": self.fixed,
            "probes": self.probes,
            "solo": self.solo,
        }

    def overrides(self) -> tuple[LayerOverride, ...]:
        return overrides_for(self.sparsities)


def overrides_for(sparsities: dict[str, float]) -> tuple[LayerOverride, ...]:
    """One exact-name override per layer, which the policy applies with scope=layer."""
    return tuple(LayerOverride(glob_escape(name), sparsity=round(s, 6)) for name, s in sparsities.items())


def glob_escape(name: str) -> str:
    """A layer name as an fnmatch pattern that matches only itself."""
    return re.sub(r"([*?\[])", r"[\1]", name)


# ---------------------------------------------------------------------------------------------
# allocation (pure Python: unit-tested without TensorFlow)


def cost_curve(points) -> list[tuple[float, float]]:
    """[(sparsity, cost)] -> the lower convex hull of the monotone curve through (0, 0)."""
    monotone, worst = [(0.0, 0.0)], 0.0
    for sparsity, cost in sorted(points):
        worst = max(worst, cost)
        monotone.append((sparsity, worst))
    hull: list[tuple[float, float]] = []
    for p in monotone:
        while len(hull) >= 2:
            (x0, y0), (x1, y1) = hull[-2], hull[-1]
            if (y1 - y0) * (p[0] - x0) >= (p[1] - y0) * (x1 - x0):  # hull[-1] on or above the chord
                hull.pop()
            else:
                break
        hull.append(p)
    return hull


def max_total(curves, sizes, fixed) -> float:
    return total_sparsity({n: c[-1][0] for n, c in curves.items()}, sizes, fixed)


def total_sparsity(alloc: dict[str, float], sizes: dict[str, int], fixed: dict[str, float]) -> float:
    pruned = sum(sizes[n] * s for n, s in alloc.items()) + sum(sizes[n] * s for n, s in fixed.items())
    return pruned / sum(sizes.values())


def allocation_for(curves, sizes, fixed, target: float) -> dict[str, float]:
    """Per-layer sparsities whose size-weighted total is `target`, at the least summed solo cost."""
    if target > max_total(curves, sizes, fixed) + 1e-9:
        raise ConfigError(
            f"--auto: total sparsity {target:g} is above what the probed per-layer sparsities "
            f"(up to {max(GRID):g}) reach; lower --sparsity"
        )
    remaining = target * sum(sizes.values()) - sum(sizes[n] * s for n, s in fixed.items())
    order = {name: i for i, name in enumerate(curves)}
    segments = []
    for name, hull in curves.items():
        for (s0, c0), (s1, c1) in zip(hull, hull[1:], strict=False):
            segments.append(((c1 - c0) / (sizes[name] * (s1 - s0)), order[name], s0, s1 - s0, name))
    alloc = {name: 0.0 for name in curves}
    for _slope, _i, _s0, width, name in sorted(segments):
        if remaining <= 0:
            break
        take = min(width, remaining / sizes[name])
        alloc[name] += take
        remaining -= take * sizes[name]
    return alloc


# ---------------------------------------------------------------------------------------------
# measuring


def _fixed_layers(groups: dict, config: PruneConfig) -> dict[str, float]:
    """Layers a recipe override gives a sparsity: auto leaves them at it (the last match wins, as in the policy)."""
    fixed = {}
    for name, group in groups.items():
        sparsity = config.rule_for(group[0].layer_name).sparsity
        if sparsity is not None:
            fixed[name] = sparsity
    return fixed


@keras_graph.loops_compiled  # recurrent layers called eagerly run their loops compiled
def plan(config: PruneConfig, progress=None, grid=None, probes: int | None = None) -> AutoPlan:
    """Measure per-layer sensitivity, choose per-layer sparsities and verify them together."""
    grid, probes = grid or GRID, PROBES if probes is None else probes

    say = progress or (lambda _msg: None)
    base = config.replace(auto=False, epochs=0, schedule="oneshot", scope="layer")
    state = sweep.open_session(base, say)
    before = state.metrics["before"]
    if before.get("accuracy") is None:
        raise ConfigError("--auto needs an accuracy to budget; this model's task has none (regression?)")
    targets = list(state.targets)
    timings = Timings()
    groups = sweep.layers_of(targets)
    fixed = _fixed_layers(groups, config)
    free = {n: g for n, g in groups.items() if n not in fixed}
    if not free:
        raise ConfigError("--auto: every layer's sparsity is fixed by an override; nothing to choose")
    sizes = {n: sum(t.size for t in g) for n, g in groups.items()}
    snapshot = sweep.Snapshot.for_config(state.model, targets, base)
    points = sweep.layer_sensitivity(state, [t for g in free.values() for t in g], grid, base, snapshot, timings, say)
    solo = _solo_costs(points, before, free)
    curves = {n: cost_curve([(sp, cost) for sp, cost, _ in pts]) for n, pts in solo.items()}
    budget = sweep.DEFAULT_BUDGET if config.max_accuracy_drop is None else config.max_accuracy_drop
    probe = _CombinedProbe(state, base, config, targets, timings, snapshot, before, sizes, fixed, say)
    notes = [] if config.scope == "layer" else ["auto: per-layer sparsities are applied with scope layer"]
    if config.sparsity is not None:
        alloc, drop = _at_target(curves, sizes, fixed, config.sparsity, budget, probe, notes)
    else:
        alloc, drop = _largest_within_budget(curves, sizes, fixed, free, probes, budget, probe, notes)
    chosen = {**alloc, **fixed}
    return AutoPlan(
        budget=budget,
        target=config.sparsity,
        sparsities={n: chosen[n] for n in groups},
        fixed=fixed,
        total_sparsity=total_sparsity(alloc, sizes, fixed),
        combined_drop=drop,
        probes=probe.probed,
        solo={n: [[sp, round(c, 6), d] for sp, c, d in pts] for n, pts in solo.items()},
        notes=notes,
    )


def _solo_costs(points, before: dict, free: dict) -> dict[str, list[tuple]]:
    """Per free layer, (sparsity, loss increase, accuracy drop) of pruning it alone at each grid point;
    a loss that was not finite costs BIG."""
    solo = {n: [] for n in free}
    for p in points:
        after = p.after_pruning or {}
        loss_up = BIG if after.get("loss") is None else after["loss"] - before["loss"]
        acc_drop = None if after.get("accuracy") is None else round(before["accuracy"] - after["accuracy"], 6)
        solo[p.curve].append((p.sparsity, loss_up, acc_drop))
    return solo


class _CombinedProbe:
    """Measures an allocation with all layers pruned together (then restores the weights), and keeps
    every probe for the report."""

    def __init__(self, state, base, config, targets, timings, snapshot, before, sizes, fixed, say):
        self.state, self.base, self.config, self.targets = state, base, config, targets
        self.timings, self.snapshot, self.before = timings, snapshot, before
        self.sizes, self.fixed, self.say = sizes, fixed, say
        self.probed: list[dict] = []

    def drop(self, alloc: dict[str, float]) -> float:
        """The accuracy drop right after pruning with `alloc` (1.0 when no accuracy was measured)."""
        overrides = tuple(self.config.overrides) + overrides_for(alloc)
        metrics, _notes = sweep.prune_point(
            self.state, self.base.replace(overrides=overrides), self.targets, self.timings
        )
        self.snapshot.restore()
        accuracy = metrics["after_pruning"].get("accuracy")
        drop = 1.0 if accuracy is None else self.before["accuracy"] - accuracy
        total = round(total_sparsity(alloc, self.sizes, self.fixed), 6)
        self.probed.append({"total_sparsity": total, "accuracy_drop": round(drop, 6)})
        self.say(f"all layers at total sparsity {total:.4f}: accuracy drop {drop:.4f}")
        return drop


def _at_target(curves, sizes, fixed, target: float, budget: float, probe: _CombinedProbe, notes: list):
    """--sparsity given: its cheapest allocation and combined drop; a note when the drop is over budget."""
    alloc = allocation_for(curves, sizes, fixed, target)
    drop = probe.drop(alloc)
    if drop > budget + 1e-9:
        notes.append(
            f"auto: at total sparsity {target:g} the accuracy drops by {drop:.4f} right after "
            f"pruning, more than the budget {budget:g}"
        )
    return alloc, drop


def _largest_within_budget(curves, sizes, fixed, free, probes: int, budget: float, probe: _CombinedProbe, notes: list):
    """No --sparsity: bisect the total sparsity over [fixed layers only, the largest probed] with
    `probes` combined measurements; the largest allocation within budget wins (none: free layers stay
    dense, and a note says so). Returns (allocation, its combined drop)."""
    alloc = {n: 0.0 for n in free}
    drop = probe.drop(alloc) if fixed else 0.0
    lo, hi = total_sparsity(alloc, sizes, fixed), max_total(curves, sizes, fixed)
    for _ in range(probes):
        guess = (lo + hi) / 2
        trial = allocation_for(curves, sizes, fixed, guess)
        trial_drop = probe.drop(trial)
        if trial_drop <= budget + 1e-9:
            lo, alloc, drop = guess, trial, trial_drop
        else:
            hi = guess
    if not any(alloc.values()):
        notes.append(f"auto: no probed sparsity kept the accuracy drop within {budget:g}; nothing extra pruned")
    return alloc, drop


@dataclass
class Planned:
    """The run --auto planned: `config` with each layer's sparsity as an override (scope layer), and
    what the report says of the plan (`record`)."""

    config: PruneConfig
    chosen: AutoPlan
    elapsed_s: float

    def record(self, report) -> None:
        report.extra["auto"] = self.chosen.to_dict()
        report.notes.extend(self.chosen.notes)
        report.timings_s["auto"] = round(self.elapsed_s, 4)
        report.timings_s["total"] = round(report.timings_s.get("total", 0.0) + self.elapsed_s, 4)


def planned(config: PruneConfig, progress=None, grid=None, probes: int | None = None) -> Planned:
    """Plan the per-layer sparsities; run/pipeline.prune then runs the ordinary pipeline with them."""
    import time

    start = time.perf_counter()
    chosen = plan(config, progress, grid, probes)
    overrides = tuple(o for o in config.overrides if o.skip) + chosen.overrides()
    return Planned(config.replace(scope="layer", overrides=overrides), chosen, time.perf_counter() - start)
