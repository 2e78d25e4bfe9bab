"""The plan of a study: the units a config asks for, computed without doing any work.

A unit is kept in its own folder under the study folder and skipped when finished, so a rerun
resumes (dakter_scale/experiment.py runs them):

  models/TAG          a joint DDPM: b_cfg (b = diffusion.b) or b_1 (b = 1, the ablation), or b_cfg's
                      sampler distilled to distill.steps steps (b_cfg_distilled, jobs/distill.py's rounds)
  generated/NAME      a generated shard set drawn from one model (NAME_all: the draw behind the filter)
  students/NAME       a student, trained and scored (metrics.json: the test split of data.spec;
                      metrics_TAG.json: another split, e.g. the validation split that chooses lambda)

Methods (one model and one generated set per b, shared by every student):
  none          real data only
  hard          + generated pairs, argmax labels with CE      (the DDPM / SatSynth-style baseline)
  hard_matched  hard, with the CE on generated pairs weighted like DAKTer's KD (lambda): the control
                that separates what the soft labels add from what a smaller generated-data weight adds
  dakter        + generated pairs, soft labels with KD        (b = the configured b, "auto" by default)
  dakter_b1     + generated pairs from a model trained with b = 1 (the ablation), soft labels with KD
  dakter_target + as many pairs from the b_cfg model whose pooled class pixel shares meet
                  synthesis.target (generated/b_cfg_target, synth/targeted.py), soft labels with KD
  copy_paste    real data only, with real instances of synthesis.target.spec's classes pasted onto
                experiment.copy_paste_share of the real samples (student/augment.py): the control
                for pasted instances, no generated data
  pasted_after  dakter's pairs (untargeted) with the same instances pasted onto every generated pair
                after sampling: what drawing around the instances adds over pasting onto a finished pair
  copy_paste_matched  copy_paste, pasting onto the share r / (1 + r) of the real samples that pasted_after's
                batches hold pasted (its generated share at the student's ratio r): the control that
                separates what the generated scenes under the instances add from how often instances are seen
  dakter_copy_paste  dakter, with copy-paste on the real samples as in copy_paste
  instance_paste     copy_paste with its donors from an instance bank (generated/bank, synth/bank.py):
                instances cut from generated pairs, judged by the real-only filter_arch student, pasted
                with their soft labels; one arm per experiment.bank_sizes entry, named instance_paste_N
                (the bank's first N instances)
  dakter_distilled  dakter, its pairs drawn with b_cfg's sampler distilled to distill.steps network
                evaluations a pair (models/b_cfg_distilled, generated/b_cfg_distilled, the distill section's
                settings): what the few-evaluation sampler costs the students against sampling.*
  pretrain_finetune  a student pretrained on dakter's generated pairs alone (KD) for
                experiment.pretrain_share of the steps, then trained on the real samples with copy_paste's
                copy-paste for the rest (student/pretrain.py): the same total steps as every other arm
Every arm trains with the same per-sample geometry (student.augment).

An augmentation ratio r means r * |D| distinct generated pairs used beside the |D| real images
(student.max_generated), mixed so that a batch holds a share r / (1 + r) of generated samples.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from dataclasses import dataclass
from typing import Any, Sequence

from dakter_scale.config import DRAWN_SUFFIX as DRAWN_SUFFIX  # study/report.py and the runner read it here
from dakter_scale.config import Config, parse_sampler_entry

TARGETED = "b_cfg_target"  # generated/b_cfg_target: dakter_target's pairs (its selection draw: b_cfg_target_all)
BANK = "bank"  # generated/bank: instance_paste's instance bank, cut from the pairs of generated/bank_pairs
BANK_PAIRS = "bank_pairs"
INSTANCE_PASTE = "instance_paste"  # an arm per bank size N: instance_paste_N
DISTILLED = "b_cfg_distilled"  # models/ and generated/b_cfg_distilled: dakter_distilled's model and pairs
# generated/NAME_all (DRAWN_SUFFIX): the pairs drawn before the label-alignment filter or the selection route kept generated/NAME
VALIDATION = "validation"  # metrics_validation.json: a student's score on experiment.validation_spec

METHOD_NAMES = {
    "none": "no augmentation",
    "hard": "hard labels (DDPM / SatSynth style)",
    "hard_matched": "hard labels, weight λ (control)",
    "dakter": "DAKTer (soft labels + KD)",
    "dakter_b1": "DAKTer, b = 1 (ablation)",
    "dakter_target": "DAKTer, class target",
    "copy_paste": "copy-paste (real only)",
    "pasted_after": "DAKTer, instances pasted after sampling",
    "copy_paste_matched": "copy-paste, as often as pasted after sampling (control)",
    "dakter_copy_paste": "DAKTer + copy-paste",
    "instance_paste": "copy-paste of generated instances",
    "pretrain_finetune": "pretrained on generated, fine-tuned on real + copy-paste",
    "dakter_distilled": "DAKTer, distilled sampler",
}
METHODS = tuple(METHOD_NAMES)


def bank_size(method: str) -> int | None:
    """N of an instance_paste_N arm, else None."""
    head, _, size = method.rpartition("_")
    return int(size) if head == INSTANCE_PASTE and size.isdigit() else None


def method_name(method: str) -> str:
    """What the reports call a method (an instance_paste_N arm by its bank's size)."""
    n = bank_size(method)
    return METHOD_NAMES[method] if n is None else f"{METHOD_NAMES[INSTANCE_PASTE]}, bank of {n:,}"


@dataclass(frozen=True)
class InstanceBank:
    """The instance bank of instance_paste: at least n instances cut from pairs of model `model` (drawn
    into generated/bank_pairs until the bank holds n), judged by the real-only student of `judge`."""

    name: str
    model: str
    n: int
    judge: str


@dataclass(frozen=True)
class StudentRun:
    """One student: its method, architecture, augmentation ratio and seed, the generated set it reads,
    its labels and its weight on generated pairs. The name is its folder under students/."""

    method: str
    arch: str
    ratio: float
    seed: int
    generated: str | None = None  # name of the generated set; None for "none"
    labels: str = "soft"
    variant: str = ""  # a suffix naming a variant: a study's sampling, a lambda of the grid, an exploratory setting
    weight: float | None = None  # weight of the loss on generated pairs (lambda / hard_weight); None = the config's
    overrides: tuple[tuple[str, Any], ...] = ()  # further student.* config keys of an exploratory variant

    @property
    def name(self) -> str:
        extra = f"-{self.variant}" if self.variant else ""
        return f"{self.method}-{self.arch}-r{self.ratio:g}-s{self.seed}{extra}"


@dataclass(frozen=True)
class Model:
    """A joint DDPM: tag b_cfg (b = diffusion.b) or b_1 (b = 1)."""

    tag: str


@dataclass(frozen=True)
class GeneratedSet:
    """n pairs drawn from model `model` into generated/NAME, with sampling.* overrides (the studies).
    With experiment.filter_keep they are the best-aligned n of a larger draw, kept as NAME_all; with a
    class target (spec, route) they meet it instead (synth/targeted.py; a selection draw is NAME_all)."""

    name: str
    model: str
    n: int
    sampling: tuple[tuple[str, Any], ...] = ()
    target: tuple[str, str] | None = None  # (synthesis.target.spec, synthesis.target.route)


@dataclass(frozen=True)
class Selection:
    """A student of the KD-weight grid, scored on the validation split only."""

    run: StudentRun


@dataclass(frozen=True)
class StudyVariant:
    """One row of the sampler or decode study: a generated set and the DAKTer students trained on it."""

    kind: str  # sampler | decode
    entry: str  # e.g. ddim:20, softmax:1
    generated: GeneratedSet
    runs: tuple[StudentRun, ...]


class Plan:
    """The units of a study from its config and the number of real training images.

    `chosen` holds, per student, the (KD weight lambda, augmentation ratio) chosen on the validation
    grid (experiment.kd_weight_grid x experiment.ratio_grid; a bare number is a lambda at the main
    ratio); while a student's setting is still to be chosen, its DAKTer and control runs carry weight
    None and the table's students wait for the choice."""

    def __init__(self, cfg: Config, n_train: int, chosen: dict[str, float | tuple] | None = None):
        self.cfg, self.n_train = cfg, n_train
        self.e = cfg.experiment
        self.chosen = {arch: _setting(v, self.e.ratio) for arch, v in (chosen or {}).items()}

    # -- lambda --------------------------------------------------------------------------------

    def kd_weight(self, arch: str) -> float | None:
        """arch's KD weight lambda: its experiment.kd_weights entry, else the lambda chosen on the
        validation grid (None until chosen), else student.kd_weight."""
        listed = self.e.kd_weight(arch, math.nan)
        if not math.isnan(listed):
            return listed
        if self.e.kd_weight_grid:
            return self.chosen[arch][0] if arch in self.chosen else None
        return self.cfg.student.kd_weight

    def ratio(self, arch: str) -> float:
        """arch's augmentation ratio in the main table: the one chosen on experiment.ratio_grid, else experiment.ratio."""
        if self.e.ratio_grid and arch in self.chosen:
            return self.chosen[arch][1]
        return self.e.ratio

    def steps(self, arch: str) -> int | None:
        """arch's student length in the main table: the one chosen on experiment.steps_grid, else None
        (student.max_steps)."""
        return self.chosen[arch][2] if self.e.steps_grid and arch in self.chosen else None

    def students(self) -> list[str]:
        """Every architecture the study trains, in config order."""
        archs = list(self.e.archs) + list(self.e.sweep_archs) + ([self.e.study_arch] if self.study_entries() else [])
        return list(dict.fromkeys(archs))

    def selection_archs(self) -> list[str]:
        """The students whose lambda or ratio is chosen on the validation grid: every student of the
        main table with a ratio grid; with a lambda grid alone, those without a listed lambda."""
        if self.e.ratio_grid or self.e.steps_grid:
            return list(dict.fromkeys(self.e.archs))
        if not self.e.kd_weight_grid:
            return []
        return [a for a in self.students() if math.isnan(self.e.kd_weight(a, math.nan))]

    def pending(self) -> bool:
        """Whether some student's lambda is still to be chosen on the validation grid."""
        return any(arch not in self.chosen for arch in self.selection_archs())

    def grid(self, arch: str) -> list[tuple[float, float, int | None]]:
        """The (lambda, ratio, student length) settings arch's DAKTer students try on the validation
        split (length None: student.max_steps)."""
        listed = self.e.kd_weight(arch, math.nan)
        weights = (
            list(self.e.kd_weight_grid)
            if self.e.kd_weight_grid and math.isnan(listed)
            else [listed if not math.isnan(listed) else self.cfg.student.kd_weight]
        )
        return [
            (w, r, n)
            for w in weights
            for r in (self.e.ratio_grid or (self.e.ratio,))
            for n in (self.e.steps_grid or (None,))
        ]

    def grid_seeds(self) -> list[int]:
        """The seeds the validation grid's students train on (none without a grid)."""
        return sorted({r.seed for r in self.selection_runs()})

    def selection_runs(self) -> list[StudentRun]:
        """One DAKTer student per (arch, setting of the grid, seed), named ...-rRATIO-sSEED-kdLAMBDA[-nSTEPS]."""
        seeds = self.e.kd_weight_seeds or self.e.seeds
        return [
            StudentRun(
                "dakter", arch, r, seed, "b_cfg", "soft", variant=grid_variant(w, n), weight=w, overrides=_length(n)
            )
            for arch in self.selection_archs()
            for w, r, n in self.grid(arch)
            for seed in seeds
        ]

    # -- students ------------------------------------------------------------------------------

    def copy_paste(self, real: float, generated: float = 0.0) -> tuple[tuple[str, Any], ...]:
        """The student.* overrides of an arm with copy-paste onto those shares of real and generated samples."""
        return (
            ("student.copy_paste", self.cfg.synthesis.target.spec),
            ("student.copy_paste_real", real),
            ("student.copy_paste_generated", generated),
        )

    def run(self, method: str, arch: str, ratio: float, seed: int) -> StudentRun:
        """A student of the tables: the method's run, at arch's chosen length (steps_grid) if any."""
        run = self._run(method, arch, ratio, seed)
        length = _length(self.steps(arch))
        return dataclasses.replace(run, overrides=length + run.overrides) if length else run

    def methods(self, methods: Sequence[str] | None = None) -> list[str]:
        """The table's methods (default experiment.methods), instance_paste as one instance_paste_N per bank size."""
        out = []
        for m in self.e.methods if methods is None else methods:
            out += [f"{INSTANCE_PASTE}_{n}" for n in self.e.bank_sizes] if m == INSTANCE_PASTE else [m]
        return out

    def _run(self, method: str, arch: str, ratio: float, seed: int) -> StudentRun:
        if method == "none":
            return StudentRun("none", arch, 0.0, seed)
        if method == "copy_paste":
            return StudentRun("copy_paste", arch, 0.0, seed, overrides=self.copy_paste(self.e.copy_paste_share))
        if method == "copy_paste_matched":  # pasted_after's pasted share of samples, all of them real
            return StudentRun(method, arch, 0.0, seed, overrides=self.copy_paste(ratio / (1.0 + ratio)))
        if bank_size(method) is not None:
            bank = (("student.instance_bank", BANK), ("student.instance_bank_size", bank_size(method)))
            return StudentRun(method, arch, 0.0, seed, overrides=self.copy_paste(self.e.copy_paste_share) + bank)
        if method == "hard":
            return StudentRun("hard", arch, ratio, seed, "b_cfg", "hard")
        weight = self.kd_weight(arch)
        if method == "hard_matched":
            s = self.cfg.student
            if weight is not None and weight == (s.ce_weight if s.hard_weight is None else s.hard_weight):
                return self._run("hard", arch, ratio, seed)  # the same weight: the same run
            return StudentRun("hard_matched", arch, ratio, seed, "b_cfg", "hard", weight=weight)
        generated = {"dakter_b1": "b_1", "dakter_target": TARGETED, "dakter_distilled": DISTILLED}.get(method, "b_cfg")
        overrides = {
            "pasted_after": self.copy_paste(0.0, 1.0),
            "dakter_copy_paste": self.copy_paste(self.e.copy_paste_share),
            "pretrain_finetune": self.copy_paste(self.e.copy_paste_share),  # the fine-tuning's copy-paste
        }.get(method, ())
        return StudentRun(method, arch, ratio, seed, generated, "soft", weight=weight, overrides=overrides)

    def real_only(self, arch: str) -> StudentRun:
        """The real-only student of `arch` (first seed): it scores label alignment for the quality table
        and for the filter."""
        return self.run("none", arch, 0, self.e.seeds[0])

    def main_runs(self) -> list[StudentRun]:
        """Every student's `seeds` first, then the students' more_seeds (the table is whole at each stop)."""
        first = [(arch, seed) for arch in self.e.archs for seed in self.e.seeds]
        more = [(arch, seed) for arch in self.e.archs for seed in self.e.seeds_of(arch) if seed not in self.e.seeds]
        return [self.run(m, arch, self.ratio(arch), seed) for arch, seed in first + more for m in self.methods()]

    def settled_runs(self) -> list[StudentRun]:
        """While the grid is pending: the table's students that every outcome of it trains alike, so a
        runner trains them before the choice or while it waits for another runner's grid. With a ratio
        grid alone these are the real-only arms but copy_paste_matched (its paste share follows the
        ratio); with a length grid, none."""
        outcomes = {
            arch: [Plan(self.cfg, self.n_train, {**self.chosen, arch: g}) for g in self.grid(arch)]
            for arch in self.selection_archs()
            if arch not in self.chosen
        }
        out = []
        for run in self.main_runs() + [self.real_only(self.e.archs[0])]:
            alike = {p.run(run.method, run.arch, p.ratio(run.arch), run.seed) for p in outcomes.get(run.arch, [self])}
            if len(alike) == 1:
                out.append(alike.pop())
        return list(dict.fromkeys(out))

    def sweep_runs(self) -> list[StudentRun]:
        return [
            self.run(m, arch, r, seed)
            for arch in self.e.sweep_archs
            for seed in self.e.sweep_seeds or self.e.seeds
            for m in self.methods(self.e.sweep_methods)
            for r in self.e.sweep_ratios
        ]

    def table_runs(self) -> list[StudentRun]:
        """The students of the main table and the sweep (each once), then the real-only segmenter."""
        return list(dict.fromkeys(self.main_runs() + self.sweep_runs() + [self.real_only(self.e.archs[0])]))

    # -- generated sets ------------------------------------------------------------------------

    def gen_size(self) -> int:
        """Pairs per generated set: the largest ratio of the tables and studies times |D|."""
        ratios = (
            [self.e.ratio, *self.e.ratio_grid]
            + (list(self.e.sweep_ratios) if self.e.sweep_archs else [])
            + ([self.e.study_ratio] if self.study_entries() else [])
        )
        return int(math.ceil(max(ratios) * self.n_train))

    def generated_sets(self) -> list[GeneratedSet]:
        """One set per model the students read (b_cfg, b_1 for dakter_b1, b_cfg_distilled with its own
        sampler for dakter_distilled), and the targeted set from b_cfg for dakter_target."""
        runs = self.main_runs() + self.sweep_runs() + self.selection_runs()
        target = (self.cfg.synthesis.target.spec, self.cfg.synthesis.target.route)
        distilled = (("sampler", "distilled"), ("steps", self.cfg.distill.steps))
        return [
            GeneratedSet(tag, "b_cfg", self.gen_size(), target=target)
            if tag == TARGETED
            else GeneratedSet(tag, tag, self.gen_size(), sampling=distilled if tag == DISTILLED else ())
            for tag in sorted({r.generated for r in runs if r.generated})
        ]

    def banks(self) -> list[InstanceBank]:
        """The instance bank the instance_paste arms read: as many instances as the largest bank size."""
        runs = self.main_runs() + self.sweep_runs()
        if not any(bank_size(r.method) is not None for r in runs):
            return []
        return [InstanceBank(BANK, "b_cfg", max(self.e.bank_sizes), self.e.filter_arch)]

    def products(self) -> list[GeneratedSet | InstanceBank]:
        """Every set and bank the plan draws from a model, whatever the grid chooses."""
        return self.generated_sets() + [v.generated for v in self.study_variants()] + self.banks()

    def models(self) -> list[str]:
        return sorted({s.model for s in self.products()})

    # -- studies -------------------------------------------------------------------------------

    def study_entries(self) -> list[tuple[str, str, dict]]:
        """(kind, entry, sampling overrides) of the sampler and decode studies."""
        out = [("sampler", e, parse_sampler_entry(e)) for e in self.e.sampler_study]
        return out + [
            ("decode", e, {"decode": e.split(":")[0], "decode_last": int(e.split(":")[1])}) for e in self.e.decode_study
        ]

    def study_variants(self) -> list[StudyVariant]:
        n = int(math.ceil(self.e.study_ratio * self.n_train))
        out = []
        for kind, entry, sampling in self.study_entries():
            name = f"{kind}_{entry.replace(':', '_')}"
            runs = tuple(
                dataclasses.replace(
                    self.run("dakter", self.e.study_arch, self.e.study_ratio, seed), generated=name, variant=name
                )
                for seed in self.e.study_seeds
            )
            out.append(StudyVariant(kind, entry, GeneratedSet(name, "b_cfg", n, tuple(sampling.items())), runs))
        return out

    # -- everything ----------------------------------------------------------------------------

    def units(self) -> list[Model | GeneratedSet | Selection | StudentRun]:
        """Every unit in the order the runner takes them: models, the filter's real-only student,
        generated sets, the lambda grid, the table's students, the studies. While the grid is still to
        choose, the plan ends with it and the students no outcome of it changes (settled_runs)."""
        out: list[Any] = [Model(tag) for tag in self.models()]
        if self.e.filter_keep > 0:
            out.append(self.real_only(self.e.filter_arch))
        out += self.generated_sets()
        out += [Selection(r) for r in self.selection_runs()]
        if self.pending():  # what every outcome of the grid trains alike need not wait for it
            settled = self.settled_runs()
            judged = self.real_only(self.e.filter_arch) in settled
            banks = [b for b in self.banks() if judged and any(bank_size(r.method) for r in settled)]
            return list(dict.fromkeys(out + banks + settled))
        # the bank once the grid chose: its judge, the real-only student, is trained at its chosen length
        out += self.banks() + self.table_runs()
        for v in self.study_variants():
            out += [v.generated, *v.runs]
        return list(dict.fromkeys(out))

    def needs(self, unit: Any, units: Sequence) -> list:
        """The units of `units` that `unit` reads, to be built before it: a student's generated set and
        instance bank, the model a set or bank is drawn from, the real-only judge of a bank or of the
        filter (experiment.filter_keep), b_cfg for the distilled model."""
        sets = {u.name: u for u in units if isinstance(u, (GeneratedSet, InstanceBank))}
        models = {u.tag: u for u in units if isinstance(u, Model)}
        out: list = []
        if isinstance(unit, (StudentRun, Selection)):
            run = student_of(unit)
            out += [sets[run.generated]] if run.generated in sets else []
            out += [u for u in units if isinstance(u, InstanceBank)] if bank_size(run.method) else []
        elif isinstance(unit, (GeneratedSet, InstanceBank)):
            out += [models[unit.model]] if unit.model in models else []
            if isinstance(unit, InstanceBank):
                out.append(self.real_only(unit.judge))
            elif self.e.filter_keep > 0 and not unit.target:
                out.append(self.real_only(self.e.filter_arch))
        elif isinstance(unit, Model) and unit.tag == DISTILLED and "b_cfg" in models:
            out.append(models["b_cfg"])
        return [u for u in out if u in units]

    def drawn_from(self, unit: Model | GeneratedSet) -> set[str]:
        """The names of what holds bytes made from `unit`, itself among them, whatever the grid chooses: a
        model's own tag, the models trained from it (the distilled one), and the sets and banks drawn
        from those; a set alone for a set."""
        if isinstance(unit, GeneratedSet):
            return {unit.name}
        every = [Model(tag) for tag in self.models()]
        models = {unit.tag} | {m.tag for m in every if unit in self.needs(m, every)}
        return models | {p.name for p in self.products() if p.model in models}

    def only(self, units: list, patterns: Sequence[str]) -> list:
        """The units of `units` that the students whose names match one of the glob `patterns` need: those
        students (table, grid or study) and, transitively, what they read (`needs`). Several runners can
        share a study's work this way (jobs/experiment.py --only), each with its own OUT and one --records
        folder."""
        matches = lambda unit: any(fnmatch.fnmatchcase(unit.name, p) for p in patterns)  # noqa: E731
        wanted = {u for u in units if isinstance(u, (StudentRun, Selection)) and matches(student_of(u))}
        frontier = list(wanted)
        while frontier:
            for need in self.needs(frontier.pop(), units):
                if need not in wanted:
                    wanted.add(need)
                    frontier.append(need)
        return [u for u in units if u in wanted]


def student_of(unit: StudentRun | Selection) -> StudentRun:
    """The student a table or grid unit trains."""
    return unit.run if isinstance(unit, Selection) else unit


def grid_variant(weight: float, steps: int | None) -> str:
    """The name suffix of a validation-grid student: kdLAMBDA, and -nSTEPS with a length grid."""
    return f"kd{weight:g}" + (f"-n{steps}" if steps else "")


def _length(steps: int | None) -> tuple[tuple[str, Any], ...]:
    return (("student.max_steps", int(steps)),) if steps else ()


def _setting(value: float | Sequence, ratio: float) -> tuple[float, float, int | None]:
    """A chosen setting as (lambda, ratio, length): a bare lambda (at the main ratio), (lambda, ratio)
    from before the length grid, or all three."""
    if isinstance(value, (int, float)):
        return float(value), ratio, None
    steps = value[2] if len(value) > 2 and value[2] is not None else None
    return float(value[0]), float(value[1]), None if steps is None else int(steps)


def chosen_settings(choice: dict[str, dict]) -> dict[str, tuple[float, float]]:
    """{arch: (lambda, ratio, length)} from the validation grid's outcome (results.json's
    kd_weight_choice; files from before the ratio grid have no chosen_ratio: the main ratio, recorded
    as ratio; without a length grid the length is None)."""
    return {
        arch: (row["chosen"], row.get("chosen_ratio", row["ratio"]), row.get("chosen_steps"))
        for arch, row in choice.items()
    }


def describe(unit: Model | GeneratedSet | Selection | StudentRun) -> str:
    """One line naming a unit for the log and --plan."""
    if isinstance(unit, Model):
        return f"model {unit.tag}"
    if isinstance(unit, GeneratedSet):
        sampling = ", ".join(f"{k} {v}" for k, v in unit.sampling)
        target = f", class target {unit.target[0]} by {unit.target[1]}" if unit.target else ""
        return (
            f"generated set {unit.name}: {unit.n} pairs from model {unit.model}"
            + (f" ({sampling})" if sampling else "")
            + target
        )
    if isinstance(unit, Selection):
        return f"student {unit.run.name} (validation grid, scored on the validation split)"
    if isinstance(unit, InstanceBank):
        return f"instance bank {unit.name}: {unit.n} instances cut from pairs of model {unit.model}, judged by the real-only {unit.judge}"
    weight = (
        ""
        if unit.generated is None or unit.method == "hard"
        else (f", weight {unit.weight:g}" if unit.weight is not None else ", lambda to be chosen")
    )
    return f"student {unit.name}" + (f" on {unit.generated}" if unit.generated else "") + weight
