"""Settings of supernet training, greedy search, the one-call ``autoslim`` and ``dms``, as JSON-round-tripping
dataclasses.

JSON written by ``to_json`` carries ``"schema": SETTINGS_SCHEMA``; ``from_json`` reads that version (and JSON with
no version, taken as the current one) and refuses any other with :class:`SettingsSchemaError`. Nested settings
(``AutoSlimSettings.train``) are rebuilt from the dataclass field types.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from typing import TypeVar

from compress.errors import InvalidParameterError, SettingsSchemaError, is_finite_number, is_int

T = TypeVar("T", bound="JsonSettings")

SETTINGS_SCHEMA = 1   # bump when a setting is renamed or changes meaning; from_json refuses any other version
SCHEMA_KEY = "schema"


def nested_settings_type(hint: object) -> type | None:
    """The JsonSettings subclass a field annotation names (``TrainSettings``, ``TrainSettings | None``), or None."""
    candidates = (hint,) + typing.get_args(hint)
    for c in candidates:
        if isinstance(c, type) and issubclass(c, JsonSettings):
            return c
    return None


def type_accepts(t: object, value: object) -> bool:
    """Whether ``value`` is of the annotated type ``t`` under the settings' rules (see ``check_types``)."""
    if t is type(None):
        return value is None
    if t is bool:
        return isinstance(value, bool)
    if t is int:
        return is_int(value)
    if t is float:
        return is_finite_number(value)
    if isinstance(t, type):
        return isinstance(value, t)
    origin = typing.get_origin(t)
    if origin is typing.Literal:
        return value in typing.get_args(t)
    return isinstance(value, origin) if isinstance(origin, type) else True


def type_name(t: object) -> str:
    names = {bool: "a bool (true/false)", int: "an int", float: "a finite number", str: "a string",
             type(None): "None"}
    if t in names:
        return names[t]
    return f"a {getattr(t, '__name__', str(t))}"


class JsonSettings:
    """``to_dict``/``from_dict``/``to_json``/``from_json`` with named errors for unknown or mistyped keys.

    ``to_json`` writes ``{"schema": SETTINGS_SCHEMA, ...fields}``; ``to_dict`` is the fields alone (it is part of
    search identities saved in work directories, so it does not change with the schema version).
    """

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps({SCHEMA_KEY: SETTINGS_SCHEMA, **self.to_dict()}, indent=1)

    @classmethod
    def from_dict(cls: type[T], data: dict) -> T:
        """Build from field values; a dict value of a field typed as a JsonSettings subclass is built into one.

        Raises:
            InvalidParameterError: ``data`` is not a dict, names an unknown setting, or a value is refused.
        """
        if not isinstance(data, dict):
            raise InvalidParameterError(f"{cls.__name__} needs a dict. Got {type(data).__name__} instead.")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise InvalidParameterError(f"{cls.__name__} has no setting(s) {unknown}. Known: {sorted(fields)}.")
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for name, value in data.items():
            sub = nested_settings_type(hints.get(name))
            kwargs[name] = sub.from_dict(value) if sub is not None and isinstance(value, dict) else value
        return cls(**kwargs)

    @classmethod
    def from_json(cls: type[T], text: str) -> T:
        """Read ``to_json``'s text.

        Raises:
            InvalidParameterError: the text is not a str or not JSON, or not settings of this class.
            SettingsSchemaError: the JSON was written for another schema version than SETTINGS_SCHEMA.
        """
        if not isinstance(text, (str, bytes, bytearray)):
            raise InvalidParameterError(f"{cls.__name__}.from_json needs the JSON text (a str). Got "
                                        f"{type(text).__name__} instead; to read a file pass Path(file).read_text().")
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InvalidParameterError(f"{cls.__name__}.from_json got text that is not JSON: {e}.") from None
        if isinstance(data, dict) and SCHEMA_KEY in data:
            data = dict(data)
            version = data.pop(SCHEMA_KEY)
            if isinstance(version, bool) or version != SETTINGS_SCHEMA:
                newer = isinstance(version, int) and not isinstance(version, bool) and version > SETTINGS_SCHEMA
                raise SettingsSchemaError(
                    f"{cls.__name__}.from_json reads settings schema version {SETTINGS_SCHEMA}. Got "
                    f"\"{SCHEMA_KEY}\": {version!r} instead"
                    + (" (written by a newer version of compress): upgrade compress to read it, or write the "
                       "settings again with this version." if newer else
                       f": this is not a settings file of this package; write it with {cls.__name__}.to_json()."))
        return cls.from_dict(data)

    def check_types(self) -> None:
        """Refuse a field whose value is not of its annotated type: bools are not numbers, numbers are finite,
        strings are strings, nested settings are settings objects (``{"train": 5}`` is refused).

        Raises:
            InvalidParameterError: names the setting, the type it needs and the value received.
        """
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value, hint = getattr(self, f.name), hints.get(f.name)
            options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
            if not any(type_accepts(t, value) for t in options):
                names = " or ".join(type_name(t) for t in options)
                raise InvalidParameterError(
                    f"{type(self).__name__}.{f.name} must be {names}. Got {value!r} ({type(value).__name__}) "
                    f"instead.")

    def _check(self, name: str, ok: bool, expected: str) -> None:
        if not ok:
            raise InvalidParameterError(
                f"{type(self).__name__}.{name} must be {expected}. Got {getattr(self, name)!r} instead.")


@dataclass
class TrainSettings(JsonSettings):
    """Slimmable supernet training: sandwich rule and inplace distillation.

    Follows Yu & Huang 2019, "Universally Slimmable Networks and Improved Training Techniques" (sandwich rule,
    inplace distillation), with the adaptive alpha-divergence of Wang et al. 2021, "AlphaNet: Improved Training
    of Supernets with Alpha-Divergence" for ``distill="alpha"``.

    Attributes:
        epochs: passes over the training loader (float; fractions of an epoch allowed), > 0.
        lr: peak SGD learning rate (Nesterov, cosine schedule) of one network's step, > 0.
        momentum: SGD momentum (dimensionless), in [0, 1).
        weight_decay: L2 weight decay of conv/linear weights (BN and biases get none), >= 0.
        warmup_epochs: linear learning-rate warm-up length, in epochs, >= 0.
        num_subnets: subnets per optimizer step: largest + smallest + (num_subnets - 2) random, int >= 2.
        min_ratio: width of the smallest subnet, as a fraction of every group's full width, in (0, 1].
        distill: "kl" (KL to the largest subnet), "alpha" (adaptive alpha-divergence) or "none" (labels for all).
        alpha_min: the negative alpha of the adaptive alpha-divergence, < 0.
        alpha_max: the positive alpha of the adaptive alpha-divergence, > 0.
        beta: clip of the importance weight (p/q)^alpha (dimensionless), > 0.
        checkpoint_every: optimizer steps between checkpoints (one is also written at every epoch end), int > 0.
        seed: seed of the random subnets and of torch's generator (int).

    Raises:
        InvalidParameterError: a field is out of the range given above (the message names the field).
    """

    epochs: float = 10.0
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float = 0.5
    num_subnets: int = 4              # largest + smallest + (n - 2) random per step
    min_ratio: float = 0.25           # the smallest subnet is every group at this fraction of its width
    distill: str = "kl"               # "kl", "alpha" (adaptive alpha-divergence) or "none" (labels for all)
    alpha_min: float = -1.0
    alpha_max: float = 1.0
    beta: float = 5.0
    checkpoint_every: int = 50        # optimizer steps between checkpoints (and at every epoch end)
    seed: int = 0

    def __post_init__(self) -> None:
        self.check_types()
        self._check("epochs", self.epochs > 0, "> 0")
        self._check("lr", self.lr > 0, "> 0")
        self._check("momentum", 0 <= self.momentum < 1, "in [0, 1)")
        self._check("weight_decay", self.weight_decay >= 0, ">= 0")
        self._check("warmup_epochs", self.warmup_epochs >= 0, ">= 0")
        self._check("num_subnets", isinstance(self.num_subnets, int) and self.num_subnets >= 2, "an int >= 2")
        self._check("min_ratio", 0 < self.min_ratio <= 1, "in (0, 1]")
        self._check("distill", self.distill in ("kl", "alpha", "none"), "'kl', 'alpha' or 'none'")
        self._check("alpha_min", self.alpha_min < 0, "< 0")
        self._check("alpha_max", self.alpha_max > 0, "> 0")
        self._check("beta", self.beta > 0, "> 0")
        self._check("checkpoint_every", isinstance(self.checkpoint_every, int) and self.checkpoint_every > 0,
                    "a positive int")


@dataclass
class SearchSettings(JsonSettings):
    """Greedy slimming (AutoSlim: Yu & Huang 2019, "AutoSlim: Towards One-Shot Architecture Search for Channel
    Numbers").

    Attributes:
        step_ratio: one cut removes this fraction of a group's full width (rounded to its divisor), in (0, 1).
        calib_batches: BN recalibration batches per candidate (fixed, reused), int > 0.
        eval_batches: held-out batches per candidate score (fixed, reused), int > 0.
        fast_factor: while cost > fast_factor x target, apply ``cuts_when_far`` cuts per step (ratio), >= 1.
        cuts_when_far: cuts per step while far from the target, int >= 1.
        full_rescore_every: score every group on every n-th step; in between only the best ``rescore_top``,
            int >= 1.
        rescore_top: groups re-scored on the steps in between, int >= 1.
        overshoot: continue the path down to this fraction of the target (for the closed loop), in (0, 1].
        min_ratio: no group below this fraction of its full width (what the supernet was trained on), in (0, 1].
        criterion: "score_per_cost" (default: held-out loss added per unit of cost saved) or "score" (AutoSlim's
            rule: the cut with the highest held-out top-1 after it, whatever it saves).

    The defaults (damage per cost, one cut per step) come from a trained ResNet-20 supernet at 50%
    of its latency (onnxruntime CPU), each search's subnet judged on 2,000 images: AutoSlim's rule with 3 cuts
    per step while far (the old defaults) 53.3% top-1, damage per cost with one cut per step 60.5% (the uniform
    width at that latency: 61.0%, a local optimum of that small space). Least damage cuts whatever hurts least
    at full width, which in a ResNet is every block's inner width first (a residual block barely misses it), and
    arrives at starved blocks; a cut's cost saving in the ranking prevents it.

    Raises:
        InvalidParameterError: a field is out of the range given above (the message names the field).
    """

    step_ratio: float = 0.1           # one cut removes this fraction of a group's full width (rounded to its divisor)
    calib_batches: int = 3            # BN recalibration batches per candidate (fixed, reused)
    eval_batches: int = 2             # held-out batches per candidate score (fixed, reused)
    fast_factor: float = 1.3          # while cost > fast_factor x target, apply several cuts per step
    cuts_when_far: int = 1            # each cut ranked after the last took effect; 3 saves time on large spaces
    full_rescore_every: int = 3       # score every group on every n-th step; in between only the best few
    rescore_top: int = 4
    overshoot: float = 0.85           # continue the path down to this fraction of the target (for the closed loop)
    min_ratio: float = 0.25           # no group below this fraction of its width (what the supernet was trained on)
    criterion: str = "score_per_cost"  # or "score" (AutoSlim's rule: least damage, whatever the cut saves)

    def __post_init__(self) -> None:
        self.check_types()
        self._check("criterion", self.criterion in ("score", "score_per_cost"), "'score' or 'score_per_cost'")
        self._check("step_ratio", 0 < self.step_ratio < 1, "in (0, 1)")
        self._check("calib_batches", isinstance(self.calib_batches, int) and self.calib_batches > 0, "an int > 0")
        self._check("eval_batches", isinstance(self.eval_batches, int) and self.eval_batches > 0, "an int > 0")
        self._check("fast_factor", self.fast_factor >= 1, ">= 1")
        self._check("cuts_when_far", isinstance(self.cuts_when_far, int) and self.cuts_when_far >= 1, "an int >= 1")
        self._check("full_rescore_every", isinstance(self.full_rescore_every, int) and self.full_rescore_every >= 1,
                    "an int >= 1")
        self._check("rescore_top", isinstance(self.rescore_top, int) and self.rescore_top >= 1, "an int >= 1")
        self._check("overshoot", 0 < self.overshoot <= 1, "in (0, 1]")
        self._check("min_ratio", 0 < self.min_ratio <= 1, "in (0, 1]")


@dataclass
class AutoSlimSettings(JsonSettings):
    """Everything ``autoslim`` does besides the model, data, budget and device.

    Attributes:
        train: supernet training (:class:`TrainSettings`).
        search: greedy slimming (:class:`SearchSettings`).
        divisor: channel counts of slimmable groups are multiples of this (channels), int >= 1.
        threads: intra-op threads of the device measurements, int >= 1.
        pretrained: reorder channels by BN importance before training the supernet (bool).
        finetune_epochs: epochs of fine-tuning the chosen subnet, distilled from the supernet, >= 0 (0: none).
        finetune_lr: learning rate of that fine-tuning, > 0.
        profile_configs: subnets profiled in context to fit the latency predictor, int >= 4.
        max_measurements: closed loop: subnets exported and measured on the device at most, int >= 1.
        min_budget_use: closed loop: try a larger subnet while measured latency < this x budget, in (0, 1).
        latency_headroom: closed loop: a measured latency counts as under the budget only this fraction below it,
            in [0, 0.5) and below ``1 - min_budget_use`` (default 0.02, ``compress.deploy.closed_loop.HEADROOM``:
            what re-measuring one file moves on a quiet host; raise it where a file's latency drifts more between
            measurements, e.g. a shared machine, and lower ``min_budget_use`` with it).
        fill_measurements: closed loop: subnets measured at most to spend budget latency steps on the path left
            unused (:func:`compress.deploy.closed_loop.fill_step`; about 4 per step filled), int >= 0 (0: the
            choice stays a path point).

    Raises:
        InvalidParameterError: a field is out of the range given above (the message names the field).
    """

    train: TrainSettings = field(default_factory=TrainSettings)
    search: SearchSettings = field(default_factory=SearchSettings)
    divisor: int = 8
    threads: int = 1                  # intra-op threads of the device measurements
    pretrained: bool = False          # reorder channels by BN importance before training the supernet
    finetune_epochs: float = 0.0      # fine-tune the chosen subnet, distilled from the supernet
    finetune_lr: float = 0.01
    profile_configs: int = 24         # subnets profiled in context to fit the latency predictor
    max_measurements: int = 6         # closed loop: subnets exported and measured at most
    min_budget_use: float = 0.95      # closed loop: try a larger subnet when measured < this x budget
    fill_measurements: int = 8        # closed loop: measured subnets filling latency steps (about 4 per step)
    latency_headroom: float = 0.02    # closed loop: under the budget = measured <= (1 - this) x budget (HEADROOM)

    def __post_init__(self) -> None:
        self.check_types()
        self._check("divisor", isinstance(self.divisor, int) and self.divisor >= 1, "an int >= 1")
        self._check("fill_measurements", isinstance(self.fill_measurements, int) and self.fill_measurements >= 0,
                    "an int >= 0")
        self._check("threads", isinstance(self.threads, int) and self.threads >= 1, "an int >= 1")
        self._check("finetune_epochs", self.finetune_epochs >= 0, ">= 0")
        self._check("finetune_lr", self.finetune_lr > 0, "> 0")
        self._check("profile_configs", isinstance(self.profile_configs, int) and self.profile_configs >= 4,
                    "an int >= 4")
        self._check("max_measurements", isinstance(self.max_measurements, int) and self.max_measurements >= 1,
                    "an int >= 1")
        self._check("min_budget_use", 0 < self.min_budget_use < 1, "in (0, 1)")
        self._check("latency_headroom", 0 <= self.latency_headroom < 0.5, "in [0, 0.5)")
        self._check("latency_headroom", self.latency_headroom < 1 - self.min_budget_use - 1e-9,
                    f"below 1 - min_budget_use = {1 - self.min_budget_use:g} (the closed loop looks for a latency "
                    "between min_budget_use and 1 - latency_headroom of the budget; lower min_budget_use)")


# DMS pipelines -> what happens to the weights: searched with the structure and then fine-tuned ("pretrained"),
# searched from random and then trained ("scratch"), frozen while the structure is searched ("search_only").
# The value is the learning rate of the subnet's training after the search (None: no training).
PIPELINES: dict[str, float | None] = {"pretrained": 0.01, "scratch": 0.05, "search_only": None}


@dataclass
class DMSSettings(JsonSettings):
    """Everything ``dms`` does besides the model, data, budget and device (search, closed loop, training after).

    DMS follows Liu et al., "Differentiable Model Scaling using Differentiable Topk" (ICML 2024). Named as in
    AutoSlimSettings where the two calls share a setting (divisor, threads, max_measurements, min_budget_use).

    Attributes:
        epochs: search epochs (weights and structure together), > 0.
        lr: weight learning rate (SGD, cosine schedule), > 0.
        structure_lr: pruning-ratio learning rate (Adam: every step moves a ratio by about this), > 0.
        lambda_resource: weight of the resource penalty in the search loss (dimensionless), > 0: the penalty is
            |log(cost / target)| (``two_sided``) or max(0, log(cost / target)).
        anneal: fraction of the search over which the target moves from the full cost to the budget, in (0, 1].
        min_ratio: no group (and no stage of blocks) below this fraction of its width, in (0, 1].
        depth: also search the number of residual blocks per stage (bool).
        two_sided: also penalise a cost below the target: the budget is to be used, not undercut (bool).
        seed: seed of the search (int).
        pipeline: a key of PIPELINES: "pretrained", "scratch" or "search_only".
        train_epochs: epochs after the search: fine-tune ("pretrained") or train ("scratch") the subnet, >= 0.
        divisor: channel counts of slimmable groups are multiples of this (channels), int >= 1.
        threads: intra-op threads of the device measurements, int >= 1.
        max_measurements: closed loop: configs of the searched shape measured at most (scalings, then groups
            widened one by one, then a stepped group pinned and the others scaled down), int >= 1.
        min_budget_use: closed loop: scale up while measured latency < this x budget, in (0, 1).
        latency_headroom: closed loop: as in AutoSlimSettings (a measured latency is under the budget only this
            fraction below it; 0.02), in [0, 0.5) and below ``1 - min_budget_use``.

    Raises:
        InvalidParameterError: a field is out of the range given above (the message names the field).
    """

    epochs: float = 1.0                # search epochs (weights and structure together)
    lr: float = 0.05                   # weight learning rate (SGD, cosine)
    structure_lr: float = 0.01         # pruning-ratio learning rate (Adam: every step moves a ratio by about this)
    lambda_resource: float = 2.0
    anneal: float = 0.5                # fraction of the search over which the target moves from full to budget
    min_ratio: float = 0.25            # no group (and no stage of blocks) below this fraction of its width
    depth: bool = True
    two_sided: bool = True             # also penalise a cost below the target: the budget is to be used, not undercut
    seed: int = 0
    pipeline: str = "pretrained"       # a key of PIPELINES
    train_epochs: float = 0.0          # after the search: fine-tune ("pretrained") or train ("scratch") the subnet
    divisor: int = 8
    threads: int = 1                   # intra-op threads of the device measurements
    max_measurements: int = 12         # closed loop: configs of the searched shape measured at most
    min_budget_use: float = 0.95       # closed loop: scale up while measured < this x budget
    latency_headroom: float = 0.02     # closed loop: under the budget = measured <= (1 - this) x budget (HEADROOM)

    @property
    def search_only(self) -> bool:
        """Structure parameters only, weights frozen (the "search_only" pipeline)."""
        return self.pipeline == "search_only"

    def __post_init__(self) -> None:
        self.check_types()
        self._check("epochs", self.epochs > 0, "> 0")
        self._check("lr", self.lr > 0, "> 0")
        self._check("structure_lr", self.structure_lr > 0, "> 0")
        self._check("lambda_resource", self.lambda_resource > 0, "> 0")
        self._check("anneal", 0 < self.anneal <= 1, "in (0, 1]")
        self._check("min_ratio", 0 < self.min_ratio <= 1, "in (0, 1]")
        self._check("pipeline", self.pipeline in PIPELINES,
                    f"a known DMS pipeline (Known: {', '.join(PIPELINES)})")
        self._check("train_epochs", self.train_epochs >= 0, ">= 0")
        self._check("divisor", isinstance(self.divisor, int) and self.divisor >= 1, "an int >= 1")
        self._check("threads", isinstance(self.threads, int) and self.threads >= 1, "an int >= 1")
        self._check("max_measurements", isinstance(self.max_measurements, int) and self.max_measurements >= 1,
                    "an int >= 1")
        self._check("min_budget_use", 0 < self.min_budget_use < 1, "in (0, 1)")
        self._check("latency_headroom", 0 <= self.latency_headroom < 0.5, "in [0, 0.5)")
        self._check("latency_headroom", self.latency_headroom < 1 - self.min_budget_use - 1e-9,
                    f"below 1 - min_budget_use = {1 - self.min_budget_use:g} (the closed loop looks for a latency "
                    "between min_budget_use and 1 - latency_headroom of the budget; lower min_budget_use)")
