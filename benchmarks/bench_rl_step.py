"""RL step time: our loop (``components.rl.loop``) vs TRL's GRPOTrainer with a latent reward
callable. Same model, LoRA (r, targets), prompts, group size, completion length, KL coefficient
and optimizer steps; both measured in this run; median seconds per step after one warm-up step.

    python benchmarks/bench_rl_step.py --model smollm2 --steps 4                  # CPU
    python benchmarks/bench_rl_step.py --model qwen3-4b-random --prompts-per-step 2 --group 8 --new 128 --dtype bfloat16

The latent reward in both: a frozen CRAFT head (random weights; the cost is what is measured)
scoring the policy's pooled last-layer state of prompt + completion.
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import common  # noqa: E402
from components.head.model import SafetyHead  # noqa: E402
from components.eval.judges import KeywordRefusalJudge  # noqa: E402
from components.lm.latents import LatentSpec  # noqa: E402
from components.rl.rewards import CraftReward, latent_scores  # noqa: E402


def setup(cfg, lm, head):
    """(policy, value head, optimizer, accelerator, reward) of our RL loop under ``cfg``: LoRA on
    ``lm.model`` (``policy.unload()`` gives the base model back), the keyword judge as the text reward."""
    from accelerate import Accelerator

    from components.rl import checkpoint
    from components.rl import loop as rl_loop
    from components.rl.policy import wrap_lora

    policy = wrap_lora(lm.model, cfg.lora, 0)
    value_head = rl_loop.ValueHead(lm.model.config.hidden_size).to(lm.device)
    opt = torch.optim.AdamW(list(checkpoint.trainable(policy).values()), lr=cfg.lr)
    return policy, value_head, opt, Accelerator(cpu=lm.device.type == "cpu"), CraftReward(head, KeywordRefusalJudge())


def ours(args, lm, head, prompts) -> list[float]:
    from components.rl import loop as rl_loop
    from components.train_rl import TrainRLConfig

    cfg = TrainRLConfig(steps=args.steps, prompts_per_step=args.prompts_per_step, group_size=args.group,
                        max_new_tokens=args.new, benign_per_step=0, minibatch_size=args.prompts_per_step * args.group,
                        ppo_epochs=1, kl_coef=0.01, lr=1e-5, lora_r=16, lora_alpha=32, judge="keyword")
    policy, value_head, opt, acc, reward = setup(cfg, lm, head)
    times = []
    for step in range(args.steps + 1):
        common.sync()
        t = time.perf_counter()
        rl_loop.rl_step(cfg, step, policy, lm.tokenizer, value_head, opt, acc, reward, {"harmful": prompts, "benign": []},
                        torch.Generator().manual_seed(step))
        common.sync()
        times.append(time.perf_counter() - t)
    policy.unload()  # give the base model back for the next peer
    return times[1:]


def trl_grpo(args, lm, head, prompts) -> list[float]:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    holder = {}

    def latent_reward(prompts, completions, **_):
        texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
        users = [p if isinstance(p, str) else p[-1]["content"] for p in prompts]
        model = holder["trainer"].model
        return latent_scores(model, lm.tokenizer, head, users, texts, lm.device)["r_lat"].tolist()

    class Clock(TrainerCallback):
        def __init__(self):
            self.marks = []

        def on_step_begin(self, *a, **k):
            common.sync()
            self.marks.append(time.perf_counter())

        def on_step_end(self, *a, **k):
            common.sync()
            self.marks[-1] = time.perf_counter() - self.marks[-1]

    cpu = lm.device.type == "cpu"
    n = args.prompts_per_step * args.group
    config = GRPOConfig(output_dir="/tmp/craft-bench-trl", max_steps=args.steps + 1, per_device_train_batch_size=n,
                        num_generations=args.group, max_completion_length=args.new, learning_rate=1e-5, beta=0.01,
                        temperature=0.6, logging_steps=1, report_to=[], save_strategy="no", use_cpu=cpu,
                        bf16=not cpu and lm.model.dtype == torch.bfloat16, gradient_checkpointing=False,
                        disable_tqdm=True, seed=0)
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": p}]} for p in prompts])
    clock = Clock()
    trainer = GRPOTrainer(model=lm.model, reward_funcs=latent_reward, args=config, train_dataset=data,
                          processing_class=lm.tokenizer,
                          peft_config=LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                                                 task_type="CAUSAL_LM"), callbacks=[clock])
    holder["trainer"] = trainer
    trainer.train()
    return clock.marks[1:]


def main() -> None:
    ap = common.parser(__doc__)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--prompts-per-step", type=int, default=2)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--new", type=int, default=32)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results = {}
    for name, fn in (("ours", ours), ("trl_grpo", trl_grpo)):
        lm, _ = common.load(args.model, args.device, args.dtype)  # a fresh model for each peer
        lm.tokenizer.padding_side = "left"
        torch.manual_seed(0)
        head = SafetyHead(lm.model.config.hidden_size, 1024, 512, LatentSpec()).to(lm.device).eval()
        results[name] = statistics.median(fn(args, lm, head, common.prompts(64)))
        del lm
    rows = [{"peer": k, "s_per_step": v, "our_time_ratio": results["ours"] / v} for k, v in results.items()]
    common.print_rows(f"RL step, {args.model}, {args.prompts_per_step}×{args.group} completions × {args.new} tokens, "
                      f"LoRA r=16 ({common.device_name()})", rows)
    meta = {"model": args.model, "prompts_per_step": args.prompts_per_step, "group": args.group,
            "new_tokens": args.new, "dtype": str(args.dtype), "command": " ".join(sys.argv)}
    print(f"saved {common.save('rl_step', rows, meta)}")


if __name__ == "__main__":
    main()
