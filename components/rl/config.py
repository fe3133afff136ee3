"""``train_rl``'s settings (params.yaml ``train_rl:``; ``train_rl_text:`` overrides some of them):
one frozen dataclass, each field documented, validated with messages that say how to fix. The
stage and its algorithm are described in ``components.train_rl``."""
from __future__ import annotations

from dataclasses import dataclass

from components.core.config import require
from components.eval.judges import JUDGES, valid_judge, valid_reward_judge
from components.rl.policy import LoraSpec
from components.rl.rewards import SOURCES
from components.rl.probe_init import AT as PROBE_AT

INITS = ("base", "sft")
DENSE_ON = ("all", "harmful")


@dataclass(frozen=True)
class TrainRLConfig:
    """params.yaml:train_rl."""

    advantage: str = "grpo"
    """grpo (group baseline: Dr. GRPO or the paper's, see ``std_norm``) | ppo (value head + GAE)."""
    steps: int = 25
    """RL steps (rollout + update) to run; >= 1."""
    prompts_per_step: int = 3
    """Harmful training prompts per step; >= 1."""
    benign_per_step: int = 1
    """Benign training prompts per step, after the harmful ones; 0 = harmful only (the paper)."""
    group_size: int = 8
    """Completions per prompt (paper: 8); >= 2 for grpo."""
    max_new_tokens: int = 32
    """Token budget of each rollout completion."""
    temperature: float = 0.8
    """Rollout sampling temperature (paper: 0.6; higher gives groups more spread to learn from)."""
    top_p: float = 1.0
    """Rollout nucleus-sampling probability mass in (0, 1]; 1.0 turns it off."""
    lr: float = 1e-3
    """AdamW learning rate of the LoRA weights; > 0 (the paper's 1e-6 is for full fine-tuning)."""
    warmup_steps: int = 3
    """RL steps over which the learning rate rises linearly to ``lr`` (step s: lr·min(1, (s+1)/warmup)); 0 = none."""
    lr_final: float = 1.0
    """LR factor at the last step: after warm-up the LR falls linearly from ``lr`` to ``lr·lr_final``
    (small late steps settle the policy); 1.0 = constant, in (0, 1]."""
    ppo_epochs: int = 1
    """Passes over each step's rollouts; >= 1 (1 with grad_accum covering the batch: one update per step)."""
    minibatch_size: int = 8
    """Rollouts per forward / backward pass; >= 1."""
    grad_accum: int = 4
    """Minibatches whose gradients are summed into one optimizer step; >= 1."""
    std_norm: bool = False
    """grpo: divide by the group's reward std (paper GRPO) or not (false: Dr. GRPO, unbiased)."""
    min_group_std: float = 0.02
    """grpo: a group whose reward std is below this gets zero advantage (DAPO dynamic sampling); >= 0."""
    clip: float = 0.2
    """PPO ratio clip ε; in (0, 1)."""
    kl_coef: float = 0.05
    """Weight of the KL to the reference policy; >= 0 (paper: 0.01)."""
    benign_sources: tuple[str, ...] = ()
    """Ingest sources the benign training prompts are drawn from (the prompts' ``source`` column,
    e.g. [benign_lookalikes]); empty = every benign source. Look-alikes share a harmful prompt's
    words but not its intent: the contrast the reward must teach. Selection keeps every benign val prompt."""
    benign_candidates: int = 8
    """1: each step's benign rollout prompts are the walk's draws. k > 1: of k times as many drawn,
    the ones the policy is likeliest to refuse (the largest probability of opening the reply with one
    of ``openings``), so a refusal of a benign prompt is sampled, and RL's reward pushes it back,
    where one is likeliest; >= 1."""
    kl_coef_benign: float | None = None
    """KL weight on benign prompts' rollouts; None = ``kl_coef``. A larger one anchors the answers to
    benign prompts (look-alikes included) to the reference, on every token sampled, not only when a
    refusal is sampled and penalised; >= 0."""
    benign_baseline: str = "group"
    """grpo: what a benign prompt's rewards are measured against. ``group``: the group mean, as for
    harmful prompts (Dr. GRPO): a benign group whose every rollout is refused scores alike and
    gets no push back. ``text_zero``: the text term against 0, the undecided verdict, and the other
    terms against their group mean, A_i = w_txt·R_txt,i + (R_rest,i − mean_group R_rest); an
    all-refused group is pushed down, an all-answered one up (``formulas.text_zero_shift``)."""
    benign_adv_weight: float = 1.0
    """Factor on the advantages of benign prompts' rollouts (1.0: every row alike). With
    ``prompts_per_step`` harmful and ``benign_per_step`` benign prompts a step, the benign rows carry
    benign/(harmful + benign) of the policy gradient; a factor of harmful/benign (3 at 3 + 1) gives the
    two kinds equal weight without more rollouts. The KL term is not scaled; > 0."""
    contrast_coef: float = 0.0
    """Weight of the prompt-swap contrast loss (``components.rl.contrast``): each sampled refusal of
    a harmful prompt must gain more under that prompt than under a benign one; 0 = off; >= 0."""
    contrast_beta: float = 0.1
    """β of the contrast loss −log σ(β·(Δ_harmful − Δ_benign)) (Δ: sequence log-ratio to the reference); > 0."""
    contrast_anchor: float = 0.0
    """DPO-Positive λ of the contrast loss: the margin loses λ·max(0, −Δ_harmful), so it cannot be
    won by making the refusal less likely than the reference under the harmful prompt; >= 0."""
    contrast_floor: float | None = None
    """The benign side of the contrast counts as max(Δ_benign, floor): 0 = no gain from making the
    refusal rarer under a benign prompt than the reference does (only the spill-over is removed); null = none."""
    contrast_max: int = 8
    """Contrast pairs per step at most (the first refusals of the step's harmful rows); >= 1."""
    opening_coef: float = 0.0
    """Weight of the unlikelihood of a refusal opening under benign prompts (``components.rl.openings``):
    L = −mean_x log(1 − P(reply to x opens with one of ``openings``)); 0 = off; >= 0."""
    opening_prompts: int = 8
    """Benign training prompts the opening term reads each step (an epoch-wise walk of the benign pool); >= 1."""
    opening_sides: str = "benign"
    """benign: the unlikelihood on benign prompts only | both: also −log P on as many harmful training
    prompts, so the term is a refusal gate's cross-entropy at the first reply tokens."""
    openings: tuple[str, ...] = ("I'm sorry", "I'm not able", "I can't", "I cannot", "I won't", "Sorry")
    """Refusal openings the term makes unlikely (the bare refusals curation writes start so); none may be
    a prefix of another once tokenised."""
    gate_steps: int = 15
    """Steps of the refusal gate's cross-entropy alone before RL starts (``components.rl.gate``): the
    adapter learns to open replies to harmful train prompts with one of ``openings`` and replies to
    benign ones otherwise; 0 = off; >= 0."""
    gate_prompts: int = 8
    """Harmful and, as many, benign training prompts each gate step reads; >= 1."""
    kl_in: str = "loss"
    """loss (GRPO style, k3) | reward (PPO-RLHF style per-token penalty)."""
    gamma: float = 1.0
    """GAE discount γ (ppo only)."""
    lam: float = 0.95
    """GAE λ (ppo only)."""
    vf_coef: float = 0.1
    """Weight of the value loss (ppo only)."""
    max_grad_norm: float = 1.0
    """Gradient-norm clip applied before each optimizer step."""
    w_lat: float = 0.5
    """Weight of the latent reward: R = w_lat·R_lat + w_txt·R_txt + w_cons·R_cons (paper)."""
    w_txt: float = 0.4
    """Weight of the text-judge reward R_txt = 2·g − 1 (g: p_safe on harmful, 1 − p_safe on benign prompts)."""
    w_cons: float = 0.2
    """Weight of the consistency reward R_cons = 1 − |p_safe_latent − g|."""
    latent_rewards: str = "sequence"
    """sequence (R_lat on the last token, paper) | dense (potential-shaped per-token R_lat; ppo only)."""
    dense_on: str = "all"
    """Rollouts whose R_lat is spread over the tokens under ``latent_rewards: dense``: all | harmful (benign
    rollouts keep w_lat·R_lat on their last token; docs/stage2.md round 33)."""
    reward_source: str = "reference"
    """reference (the frozen model re-encodes the text: no reward for moving the policy's own
    activations; chosen on val, docs/stage2.md) | policy (live hidden states, the paper)."""
    judge: str = "ensemble"
    """The reward's text judge (keyword | embedding | ensemble | evidence | hf:<path>); never the held-out
    evaluation judge, which grades what this stage trains."""
    lora_r: int = 8
    """LoRA rank."""
    lora_alpha: int = 16
    """LoRA scale α (the update is scaled by α / r)."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA input, in [0, 1)."""
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    """Names of the modules that get LoRA adapters."""
    lora_init: str = "probe"
    """random (peft's A) | probe (every row of A along the harmful − benign difference of its layer's
    input over the train prompts, off their shared mean, plus a little of peft's A:
    components/rl/probe_init.py)."""
    probe_at: str = "last"
    """lora_init probe: where each train prompt's layer inputs are read: last (the last prompt
    position, which emits the first reply token; docs/stage2.md round 14) | mean (over the
    prompt's tokens, round 8)."""
    probe_shrinkage: float = 1.0
    """lora_init probe: α of the kind axis S_α⁻¹·(mean_h − mean_b), S_α = (1 − α)·S + α·(tr S/d)·I with S
    the within-kind covariance of the layer inputs: 1.0 = the mean difference (rounds 8–17), below 1
    a regularised Fisher discriminant (components/rl/probe_init.py); in (0, 1]."""
    select_harmful: int = 24
    """Selection: the first (sorted) harmful ``val`` prompts answered greedily; >= 1."""
    select_benign: int = 48
    """Selection: the first (sorted) benign ``val`` prompts answered greedily; >= 0."""
    select_max_new_tokens: int = 48
    """Token budget of the greedy selection replies. Keep it equal to ``evaluate.max_new_tokens``
    (tests/test_config.py checks params.yaml) so val measures what evaluation reports: graded at the
    rollouts' 32 tokens, a refusal that starts after token 32 read as compliance (docs/stage2.md
    round 12); >= 1."""
    select_lambda: float = 2.0
    """Selection score = val_refusal − select_lambda·val_over_refusal; >= 0."""
    select_judge: str = "heldout"
    """Judge that grades the selection replies (the held-out judge: the policy never trained on it)."""
    log_every: int = 5
    """Steps between selection evaluations (also at step −1 and at the end); >= 1."""
    select_from: int = 0
    """Cadence points before this 0-based step are skipped (step −1 and the end are always
    evaluated): each point costs a val pass (~7 s on a CPU), and in round 11b no seed picked a step
    before 17; >= 0."""
    ema_decay: float = 0.0
    """Polyak average of the LoRA weights, read at selection and saved as the output (the live weights
    still roll out and learn; components/rl/average.py): θ̄ ← d·θ̄ + (1 − d)·θ after each RL step, over
    about 1/(1 − d) steps; 0 = off (selection reads the live weights); in [0, 1)."""
    checkpoint_every: int = 4
    """Steps between resumable checkpoints; >= 1."""
    kl_stop: float = 1.0
    """Guard: end training early (and keep the last good state) when mean KL exceeds this."""
    seed: int = 0
    """Seed of prompt sampling, rollouts and the LoRA initialisation."""
    init: str = "base"
    """What RL starts from: base (a fresh LoRA on the base model: policy = reference = base) | sft
    (the ``train_sft`` adapter is merged into the weights, so policy and reference start as the SFT
    model, and the output adapter stacks the SFT and RL adapters: rank lora_r + train_sft.lora_r)."""

    def __post_init__(self) -> None:
        require(self.probe_at in PROBE_AT,
                f"train_rl.probe_at={self.probe_at!r}: use last (the prompt's last position) or mean (over its tokens).")
        require(0 < self.probe_shrinkage <= 1,
                f"train_rl.probe_shrinkage={self.probe_shrinkage!r}: use a value in (0, 1], e.g. 0.5 "
                "(1.0 = the mean difference).")
        require(self.lora_init in ("random", "probe"),
                f"train_rl.lora_init={self.lora_init!r}: use random (peft's init) or probe (rows along the "
                "harmful − benign direction of the train prompts).")
        require(self.init in INITS, f"train_rl.init={self.init!r}: use one of {INITS}.")
        require(self.advantage in ("grpo", "ppo"), f"train_rl.advantage={self.advantage!r}: use grpo or ppo.")
        require(self.kl_in in ("loss", "reward"), f"train_rl.kl_in={self.kl_in!r}: use loss or reward.")
        require(self.reward_source in SOURCES,
                f"train_rl.reward_source={self.reward_source!r}: use one of {SOURCES}.")
        require(self.steps >= 1, f"train_rl.steps={self.steps!r}: use 1 or more, e.g. 16.")
        require(self.prompts_per_step >= 1,
                f"train_rl.prompts_per_step={self.prompts_per_step!r}: use 1 or more, e.g. 4.")
        require(self.group_size >= 2 or self.advantage == "ppo",
                f"train_rl.group_size={self.group_size!r}: use 2 or more with advantage grpo "
                "(the baseline is the group), e.g. 4, or set advantage: ppo.")
        require(self.minibatch_size >= 1, f"train_rl.minibatch_size={self.minibatch_size!r}: use 1 or more, e.g. 8.")
        require(self.grad_accum >= 1, f"train_rl.grad_accum={self.grad_accum!r}: use 1 or more, e.g. 2.")
        require(self.ppo_epochs >= 1, f"train_rl.ppo_epochs={self.ppo_epochs!r}: use 1 or more, e.g. 1.")
        require(0 < self.clip < 1, f"train_rl.clip={self.clip!r}: use a value in (0, 1), e.g. 0.2.")
        require(self.kl_coef >= 0, f"train_rl.kl_coef={self.kl_coef!r}: use 0 (no KL term) or more, e.g. 0.05.")
        require(self.kl_coef_benign is None or self.kl_coef_benign >= 0,
                f"train_rl.kl_coef_benign={self.kl_coef_benign!r}: use null (= kl_coef) or 0 or more, e.g. 0.5.")
        require(self.benign_baseline in ("group", "text_zero"),
                f"train_rl.benign_baseline={self.benign_baseline!r}: use group (the group mean) or text_zero "
                "(the text reward of benign rollouts against 0).")
        require(self.benign_baseline == "group" or self.advantage == "grpo",
                f"train_rl.benign_baseline={self.benign_baseline} sets a group baseline: use advantage: grpo, "
                "or benign_baseline: group with advantage ppo (its baseline is the value head).")
        require(self.benign_baseline == "group" or not self.std_norm,
                f"train_rl.benign_baseline={self.benign_baseline} adds the text term unscaled: use std_norm: false "
                "(Dr. GRPO), or benign_baseline: group with std_norm true.")
        require(self.benign_adv_weight > 0,
                f"train_rl.benign_adv_weight={self.benign_adv_weight!r}: use a positive factor, e.g. 1.0 (off) or 3.0 "
                "(benign rows weigh as much as harmful ones at 3 + 1 prompts a step).")
        require(self.contrast_coef >= 0,
                f"train_rl.contrast_coef={self.contrast_coef!r}: use 0 (off) or more, e.g. 0.5.")
        require(self.contrast_beta > 0, f"train_rl.contrast_beta={self.contrast_beta!r}: use a positive β, e.g. 0.1.")
        require(self.contrast_anchor >= 0,
                f"train_rl.contrast_anchor={self.contrast_anchor!r}: use 0 (plain DPO margin) or more, e.g. 5.")
        require(self.contrast_max >= 1, f"train_rl.contrast_max={self.contrast_max!r}: use 1 or more, e.g. 8.")
        require(self.opening_coef >= 0,
                f"train_rl.opening_coef={self.opening_coef!r}: use 0 (off) or more, e.g. 1.0.")
        require(self.opening_sides in ("benign", "both"),
                f"train_rl.opening_sides={self.opening_sides!r}: use benign (unlikelihood on benign prompts) "
                "or both (also the likelihood on harmful ones).")
        require(self.opening_prompts >= 1,
                f"train_rl.opening_prompts={self.opening_prompts!r}: use 1 or more, e.g. 8.")
        require(self.opening_coef == 0 and self.gate_steps == 0 and self.benign_candidates == 1
                or (len(self.openings) >= 1 and all(o and o == o.strip() for o in self.openings)
                    and len(set(self.openings)) == len(self.openings)),
                f"train_rl.openings={list(self.openings)!r}: name at least one opening, each once, non-empty and "
                "without surrounding spaces (a reply's first token has none), e.g. [\"I'm sorry\", \"I can't\"], "
                "or set opening_coef: 0, gate_steps: 0 and benign_candidates: 1.")
        require(self.opening_coef == 0 or self.benign_per_step >= 1,
                f"train_rl.opening_coef={self.opening_coef!r} reads benign training prompts: "
                "set benign_per_step to 1 or more, or opening_coef: 0.")
        require(self.benign_candidates >= 1,
                f"train_rl.benign_candidates={self.benign_candidates!r}: use 1 (the walk's prompts) or more, e.g. 8.")
        require(self.gate_steps >= 0, f"train_rl.gate_steps={self.gate_steps!r}: use 0 (off) or more, e.g. 15.")
        require(self.gate_prompts >= 1, f"train_rl.gate_prompts={self.gate_prompts!r}: use 1 or more, e.g. 8.")
        require(self.contrast_coef == 0 or self.benign_per_step >= 1,
                f"train_rl.contrast_coef={self.contrast_coef!r} pairs refusals with benign training prompts: "
                "set benign_per_step to 1 or more, or contrast_coef: 0.")
        require(self.lr > 0, f"train_rl.lr={self.lr!r}: use a positive learning rate, e.g. 0.001.")
        require(self.log_every >= 1, f"train_rl.log_every={self.log_every!r}: use 1 or more, e.g. 4.")
        require(0 < self.top_p <= 1, f"train_rl.top_p={self.top_p!r}: use a mass in (0, 1], e.g. 1.0 (off).")
        require(self.select_from >= 0, f"train_rl.select_from={self.select_from!r}: use 0 or more, e.g. 15.")
        require(self.checkpoint_every >= 1,
                f"train_rl.checkpoint_every={self.checkpoint_every!r}: use 1 or more, e.g. 4.")
        require(self.benign_per_step >= 0,
                f"train_rl.benign_per_step={self.benign_per_step!r}: use 0 (harmful only) or more, e.g. 1.")
        require(0 < self.lr_final <= 1, f"train_rl.lr_final={self.lr_final!r}: use a factor in (0, 1], e.g. 0.1 "
                                        "(1.0 keeps the LR constant after warm-up).")
        require(self.warmup_steps >= 0, f"train_rl.warmup_steps={self.warmup_steps!r}: use 0 (none) or more, e.g. 3.")
        require(self.min_group_std >= 0,
                f"train_rl.min_group_std={self.min_group_std!r}: use 0 (keep every group) or more, e.g. 0.02.")
        require(self.latent_rewards in ("sequence", "dense"),
                f"train_rl.latent_rewards={self.latent_rewards!r}: use sequence or dense.")
        require(self.latent_rewards == "sequence" or self.advantage == "ppo",
                f"train_rl.latent_rewards=dense needs per-token credit: set advantage: ppo (GAE), "
                f"or latent_rewards: sequence with advantage {self.advantage}.")
        require(self.dense_on in DENSE_ON, f"train_rl.dense_on={self.dense_on!r}: use one of {DENSE_ON}.")
        require(self.dense_on == "all" or self.latent_rewards == "dense",
                f"train_rl.dense_on={self.dense_on!r} acts only on per-token latent rewards: set latent_rewards: "
                "dense (with advantage: ppo), or leave dense_on: all.")
        require(self.select_harmful >= 1, f"train_rl.select_harmful={self.select_harmful!r}: use 1 or more, e.g. 24.")
        require(self.select_benign >= 0, f"train_rl.select_benign={self.select_benign!r}: use 0 or more, e.g. 48.")
        require(self.select_max_new_tokens >= 1,
                f"train_rl.select_max_new_tokens={self.select_max_new_tokens!r}: use 1 or more, e.g. 48 "
                "(evaluate.max_new_tokens).")
        require(self.select_lambda >= 0, f"train_rl.select_lambda={self.select_lambda!r}: use 0 or more, e.g. 2.0.")
        require(0 <= self.ema_decay < 1,
                f"train_rl.ema_decay={self.ema_decay!r}: use 0 (off) or a decay in (0, 1), e.g. 0.8 (an average "
                "over about 5 steps); 1 would never move.")
        require(valid_judge(self.select_judge),
                f"train_rl.select_judge={self.select_judge!r}: use heldout, one of {JUDGES} or hf:<path>.")
        require(valid_reward_judge(self.judge),
                f"train_rl.judge={self.judge!r}: use one of {JUDGES} or hf:<path> "
                "(the held-out judge only grades).")

    @property
    def lora(self) -> LoraSpec:
        return LoraSpec(self.lora_r, self.lora_alpha, self.lora_dropout, self.lora_targets)
